// One project: its live state in full, whether its log's hash chain holds, its event history, and
// (admin) every client's cursor and lag. Looking at the page marks its notifications read.
import { useContext, useEffect } from 'react';
import { HeraldContext, useProject, useProjectStore } from '@herald/client/react';
import type { ProjectInfo } from '../../api';
import { EmptyState } from '../EmptyState';
import { ErrorBoundary } from '../ErrorBoundary';
import { Icon } from '../Icon';
import { Link } from '../Link';
import { ProjectCard } from '../dashboard/ProjectCard';
import { ChainBadge } from './ChainBadge';
import { CursorTable } from './CursorTable';
import { History } from './History';

interface ProjectPageProps {
  projectId: string;
  /** The projects the token can read; null while loading. */
  projects: ProjectInfo[] | null;
  token: string;
  admin: boolean;
  /** The token has the audit scope (admin implies it): the export and the ack ledger. */
  auditor: boolean;
}

function MarkReadWhileOpen({ projectId }: { projectId: string }) {
  const project = useProject(projectId);
  const markRead = useProjectStore((state) => state.markRead);
  const seq = project?.status === 'ready' ? project.seq : null;
  useEffect(() => {
    if (seq !== null && document.visibilityState === 'visible') markRead(projectId);
  }, [markRead, projectId, seq]);
  return null;
}

export function ProjectPage({ projectId, projects, token, admin, auditor }: ProjectPageProps) {
  const client = useContext(HeraldContext);
  const info = projects?.find((project) => project.id === projectId);
  if (projects === null) return <p className="page-note">Loading…</p>;
  if (info === undefined) {
    return (
      <EmptyState icon="alert" title={`No project “${projectId}” here`}>
        It does not exist, or this token cannot read it. <Link to="/">Back to every project</Link>
      </EmptyState>
    );
  }
  return (
    <div className="project-page">
      <MarkReadWhileOpen projectId={projectId} />
      <div className="page-head">
        <Link to="/" className="back">
          <Icon name="arrowLeft" />
          All projects
        </Link>
        <ErrorBoundary what="the chain check">
          <ChainBadge projectId={projectId} token={token} />
        </ErrorBoundary>
      </div>
      <div className="project-grid">
        <ErrorBoundary what={`the ${info.name} card`}>
          <ProjectCard info={info} variant="full" />
        </ErrorBoundary>
        <div className="project-side">
          <ErrorBoundary what="the event history">
            <History projectId={projectId} token={token} auditor={auditor} />
          </ErrorBoundary>
          {admin && (
            <ErrorBoundary what="the cursors">
              <CursorTable projectId={projectId} token={token} clientId={client?.clientId ?? null} />
            </ErrorBoundary>
          )}
        </div>
      </div>
    </div>
  );
}
