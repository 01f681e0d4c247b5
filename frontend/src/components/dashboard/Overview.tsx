// Every project the token can read, as live cards; each card behind its own error boundary.
import type { ProjectInfo } from '../../api';
import { EmptyState } from '../EmptyState';
import { ErrorBoundary } from '../ErrorBoundary';
import { ProjectCard } from './ProjectCard';

export function Overview({ projects, error }: { projects: ProjectInfo[] | null; error: string | null }) {
  if (projects === null) {
    if (error !== null) {
      return (
        <EmptyState icon="offline" title="Cannot load the projects">
          {error}. The page tries again as soon as the connection is back.
        </EmptyState>
      );
    }
    return <p className="page-note">Loading projects…</p>;
  }
  if (projects.length === 0) {
    return (
      <EmptyState icon="bell" title="No projects yet">
        <p>Create one, and its agent runs, pull requests and checks appear here as they happen:</p>
        <pre className="code">python -m service project add web --name "Web app" --repo owner/web</pre>
        <p>or start the service with a live demo stream: <code>make run</code>.</p>
      </EmptyState>
    );
  }
  return (
    <>
      <div className="page-title">
        <h1>Projects</h1>
        <span className="muted">
          {projects.length === 1 ? '1 project' : `${projects.length} projects`}, updated live
        </span>
      </div>
      <div className="cards">
        {projects.map((project) => (
          <ErrorBoundary key={project.id} what={`the ${project.name} card`} className="card">
            <ProjectCard info={project} />
          </ErrorBoundary>
        ))}
      </div>
    </>
  );
}
