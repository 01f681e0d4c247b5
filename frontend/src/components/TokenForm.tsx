// Asked when the page has no token (no `#token=` in the URL, none kept from before) or the service
// refused the one it had.
import { useState, type FormEvent } from 'react';
import { tokenProblem } from '../auth';
import { Logo } from './Header';

export function TokenForm({ notice, onToken }: { notice: string | null; onToken: (token: string) => void }) {
  const [value, setValue] = useState('');
  const [problem, setProblem] = useState<string | null>(null);

  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const token = value.trim();
    const why = token === '' ? 'Paste a token first.' : tokenProblem(token);
    if (why !== null) {
      setProblem(why);
      return;
    }
    onToken(token);
  };

  const message = problem ?? notice;
  return (
    <main className="signin">
      <form className="signin-card" onSubmit={submit} aria-labelledby="signin-title" noValidate>
        <div className="signin-brand">
          <Logo />
          <h1 id="signin-title">Herald</h1>
        </div>
        <p className="signin-lead">Live agent runs, pull requests and CI validations. Sign in with an access token.</p>
        {message !== null && (
          <p className="signin-error" role="alert">
            {message}
          </p>
        )}
        <label className="field">
          <span>Access token</span>
          <input
            type="password"
            name="token"
            autoComplete="off"
            spellCheck={false}
            value={value}
            onChange={(event) => {
              setValue(event.target.value);
              setProblem(null);
            }}
            placeholder="eyJhbGciOi…"
            aria-invalid={message !== null}
          />
        </label>
        <button type="submit" className="button button-primary">
          Open the dashboard
        </button>
        <div className="signin-help">
          <p>
            <code>make run</code> prints a link that signs you in. Or make a token:
          </p>
          <pre className="code">python -m service token --user you \{'\n'}  --projects &apos;*&apos; --scopes subscribe,publish</pre>
        </div>
      </form>
    </main>
  );
}
