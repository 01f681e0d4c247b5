// Keeps a failure in one part of the page (a card, a section) from blanking the rest: the part shows
// what went wrong and a way to try again; everything around it keeps updating. (React reports the
// error through the root's onCaughtError, main.tsx.)
import { Component, type ReactNode } from 'react';
import { Icon } from './Icon';

interface Props {
  /** What failed, in words: "the Acme Web card". */
  what: string;
  children: ReactNode;
  className?: string;
}

interface State {
  error: Error | null;
}

export class ErrorBoundary extends Component<Props, State> {
  state: State = { error: null };

  static getDerivedStateFromError(error: unknown): State {
    return { error: error instanceof Error ? error : new Error(String(error)) };
  }

  private retry = () => this.setState({ error: null });

  render() {
    const { error } = this.state;
    if (error === null) return this.props.children;
    return (
      <div className={`failed ${this.props.className ?? ''}`} role="alert" data-failed={this.props.what}>
        <Icon name="alert" />
        <div>
          <p className="failed-title">Could not show {this.props.what}.</p>
          <p className="failed-detail">{error.message}</p>
          <button type="button" className="button" onClick={this.retry}>
            Try again
          </button>
        </div>
      </div>
    );
  }
}
