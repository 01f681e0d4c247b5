// One project, live: its agent runs (progress, status, step), its recent pull-request notifications,
// the status of each validation, how many notifications are unread, and a quiet line when the project
// was reloaded because its history could not be followed. The root carries `data-project-id`; every
// item carries the `data-seq` of the event it shows.
import { useState, type ReactNode } from 'react';
import {
  pullRequestKey,
  runsByActivity,
  validationsByPullRequest,
  type Notice,
  type Project,
} from '@herald/client';
import { useProject, useProjectStore } from '@herald/client/react';
import type { ProjectInfo } from '../../api';
import { projectPath } from '../../route';
import { Icon } from '../Icon';
import { Link } from '../Link';
import { AgentRunList } from './AgentRunList';
import { PrFeed } from './PrFeed';
import { ValidationList } from './ValidationList';
import { validationLook } from './status';

/** How many items each list shows: on the overview (then a link to the project page), and on the
 * project page until "show all". */
export const CARD_LIMITS = {
  compact: { runs: 4, notifications: 5, validations: 6 },
  full: { runs: 8, notifications: 10, validations: 12 },
} as const;

interface Summary {
  activeRuns: number;
  failing: number;
  checking: number;
}

const DONE_ACTIONS = new Set(['closed', 'merged']);

/** Active runs, and the checks failing or still running on the head commits of open pull requests
 * (a failure on a commit since replaced, or on a merged pull request, is history, not a problem). */
function summarize(project: Project): Summary {
  let failing = 0;
  let checking = 0;
  const byPullRequest = validationsByPullRequest(project);
  for (const pr of project.pullRequests) {
    if (DONE_ACTIONS.has(pr.data.action)) continue;
    for (const validation of byPullRequest.get(pullRequestKey(pr)) ?? []) {
      const tone = validationLook(validation.data).tone;
      if (tone === 'failure') failing += 1;
      else if (tone === 'active' || tone === 'waiting') checking += 1;
    }
  }
  const activeRuns = project.agentRuns.filter((run) => run.data.status === 'running' || run.data.status === 'queued').length;
  return { activeRuns, failing, checking };
}

interface MoreProps {
  shown: number | undefined;
  total: number;
  noun: string;
  /** The project page (from the overview), or null to expand in place. */
  to: string | null;
  onShowAll: () => void;
}

function More({ shown, total, noun, to, onShowAll }: MoreProps) {
  if (shown === undefined || total <= shown) return null;
  if (to === null) {
    return (
      <button type="button" className="link-button more" onClick={onShowAll}>
        Show all {total} {noun}
      </button>
    );
  }
  return (
    <Link to={to} className="more">
      {total - shown} more {noun} →
    </Link>
  );
}

const NOTICE_TEXT: Record<Notice['kind'], string> = {
  history_truncated: 'Older history was pruned; showing the current state.',
  reset: 'The service’s log was reset; reloaded the current state.',
};

/** Why the project was reloaded: a polite status line, not an alert, until dismissed. */
function ProjectNotice({ notice, onDismiss }: { notice: Notice; onDismiss: () => void }) {
  const title = notice.kind === 'history_truncated' && notice.oldest !== null ? `The oldest event kept is #${notice.oldest}` : undefined;
  return (
    <p className="card-notice" role="status" data-notice={notice.kind} title={title}>
      <span>{NOTICE_TEXT[notice.kind]}</span>
      <button type="button" className="link-button" onClick={onDismiss}>
        Dismiss
      </button>
    </p>
  );
}

interface SectionProps {
  title: string;
  aside?: string;
  asideTitle?: string;
  children: ReactNode;
  className: string;
}

function Section({ title, aside, asideTitle, children, className }: SectionProps) {
  return (
    <section className={`card-section ${className}`}>
      <h3 className="section-title">
        {title}
        {aside ? (
          <span className="section-aside" title={asideTitle}>
            {aside}
          </span>
        ) : null}
      </h3>
      {children}
    </section>
  );
}

export interface ProjectCardProps {
  info: ProjectInfo;
  /** The overview's compact card (a few items per list, links to the project page) or the whole project. */
  variant?: 'compact' | 'full';
}

export function ProjectCard({ info, variant = 'compact' }: ProjectCardProps) {
  const project = useProject(info.id);
  const markRead = useProjectStore((state) => state.markRead);
  const dismissNotice = useProjectStore((state) => state.dismissNotice);
  const [all, setAll] = useState(false);
  const page = variant === 'compact' ? projectPath(info.id) : null;
  const limits = CARD_LIMITS[variant];
  const limit = (key: keyof typeof limits) => (all ? undefined : limits[key]);
  const showAll = () => setAll(true);

  let body: ReactNode;
  if (project === undefined || (project.status === 'loading' && project.error === undefined)) {
    body = <p className="card-note">Loading…</p>;
  } else if (project.status === 'loading') {
    body = <p className="card-note">Still loading ({project.error}); retrying.</p>;
  } else if (project.status === 'error') {
    body = (
      <p className="card-note tone-failure" role="alert">
        This project cannot be read: {project.error}
      </p>
    );
  } else {
    const runs = runsByActivity(project);
    const summary = summarize(project);
    body = (
      <div className="card-sections">
        <Section title="Agent runs" aside={summary.activeRuns > 0 ? `${summary.activeRuns} active` : undefined} className="section-runs">
          <AgentRunList runs={runs} limit={limit('runs')} />
          <More shown={limit('runs')} total={runs.length} noun="runs" to={page} onShowAll={showAll} />
        </Section>
        <Section title="Pull requests" className="section-prs">
          <PrFeed notifications={project.notifications} readSeq={project.readSeq} limit={limit('notifications')} />
          <More shown={limit('notifications')} total={project.notifications.length} noun="notifications" to={page} onShowAll={showAll} />
        </Section>
        <Section
          title="Validations"
          aside={[summary.failing > 0 ? `${summary.failing} failing` : '', summary.checking > 0 ? `${summary.checking} running` : '']
            .filter(Boolean)
            .join(' · ')}
          asideTitle="On the head commits of open pull requests"
          className="section-validations"
        >
          <ValidationList validations={project.validations} limit={limit('validations')} />
          <More shown={limit('validations')} total={project.validations.length} noun="validations" to={page} onShowAll={showAll} />
        </Section>
      </div>
    );
  }

  const unread = project?.unread ?? 0;
  return (
    <article className={`card project-card project-card-${variant}`} data-project-id={info.id} aria-label={info.name}>
      <header className="card-head">
        <div className="card-title">
          <h2>{page === null ? info.name : <Link to={page}>{info.name}</Link>}</h2>
          <p className="card-sub">
            <span className="mono">{info.repo ?? info.id}</span>
            {project !== undefined && project.status === 'ready' ? <span className="muted">{project.seq === 1 ? '1 event' : `${project.seq} events`}</span> : null}
          </p>
        </div>
        <div className="card-tools">
          {unread > 0 ? (
            <>
              <span className="unread-count" data-unread={unread}>
                <Icon name="bell" />
                {unread} unread
              </span>
              <button type="button" className="button button-small" onClick={() => markRead(info.id)} aria-label={`Mark ${info.name} read`}>
                Mark read
              </button>
            </>
          ) : (
            <span className="unread-count unread-none" data-unread={0}>
              All read
            </span>
          )}
        </div>
      </header>
      {project?.notice !== undefined ? <ProjectNotice notice={project.notice} onDismiss={() => dismissNotice(info.id)} /> : null}
      {body}
    </article>
  );
}
