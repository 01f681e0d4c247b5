// The dashboard: an auth gate (a token from `#token=…`, kept from before, or asked for), then one
// session per token (the client, its project store) and the two pages: the overview and a project.
import { useCallback, useEffect, useMemo, useState } from 'react';
import { HeraldContext, ProjectStoreContext } from '@herald/client/react';
import { createClient, createProjectStore, indexedDbQueue, type ClientOptions } from '@herald/client';
import { forgetToken, hasScope, readClaims, saveToken, storedToken, takeTokenFromUrl, tokenProblem, type Claims } from './auth';
import { EmptyState } from './components/EmptyState';
import { ErrorBoundary } from './components/ErrorBoundary';
import { Header } from './components/Header';
import { Link } from './components/Link';
import { TokenForm } from './components/TokenForm';
import { ConnectionBanner } from './components/dashboard/ConnectionBanner';
import { Overview } from './components/dashboard/Overview';
import { ActionsProvider } from './components/dashboard/actions';
import { ProjectPage } from './components/project/ProjectPage';
import { useProjectList } from './components/useProjectList';
import { useRoute } from './route';

interface Auth {
  token: string | null;
  /** Why the form is shown again (a refused or expired token). */
  notice: string | null;
}

function initialAuth(): Auth {
  const token = takeTokenFromUrl() ?? storedToken();
  if (token === null) return { token: null, notice: null };
  const problem = tokenProblem(token);
  if (problem !== null) {
    forgetToken();
    return { token: null, notice: problem };
  }
  return { token, notice: null };
}

export default function App() {
  const [auth, setAuth] = useState<Auth>(initialAuth);
  const signOut = useCallback((notice: string | null) => {
    forgetToken();
    setAuth({ token: null, notice });
  }, []);
  const signIn = useCallback((token: string) => {
    saveToken(token);
    setAuth({ token, notice: null });
  }, []);

  if (auth.token === null) return <TokenForm notice={auth.notice} onToken={signIn} />;
  return (
    <ErrorBoundary what="the dashboard" className="page-failed">
      <Session key={auth.token} token={auth.token} onSignOut={signOut} />
    </ErrorBoundary>
  );
}

/** The offline queue of this user (IndexedDB where the page has it): whoever opens it next sends what it holds. */
function queueFor(claims: Claims | null): Pick<ClientOptions, 'queue'> {
  if (typeof indexedDB === 'undefined') return {};
  return { queue: indexedDbQueue({ name: `herald:${claims?.user ?? 'anonymous'}` }) };
}

const REFUSED_TOKEN = /\b4401\b/;

function Session({ token, onSignOut }: { token: string; onSignOut: (notice: string | null) => void }) {
  const claims = useMemo(() => readClaims(token), [token]);
  const [session] = useState(() => {
    const client = createClient({ token, ...queueFor(claims) });
    return { client, store: createProjectStore({ client }) };
  });
  const { client, store } = session;

  useEffect(() => {
    client.connect();
    const stop = client.on('state', (state) => {
      if (state.status === 'error' && REFUSED_TOKEN.test(state.error ?? '')) {
        onSignOut('The service no longer accepts this token (expired or revoked). Sign in with a new one.');
      }
    });
    return () => {
      stop();
      client.close();
    };
  }, [client, onSignOut]);

  const unauthorized = useCallback(
    (message: string) => onSignOut(`The service refused this token: ${message}. Sign in with another one.`),
    [onSignOut],
  );

  return (
    <HeraldContext value={client}>
      <ProjectStoreContext value={store}>
        <ActionsProvider enabled={hasScope(claims, 'publish')}>
          <Shell token={token} claims={claims} onUnauthorized={unauthorized} onSignOut={() => onSignOut(null)} />
        </ActionsProvider>
      </ProjectStoreContext>
    </HeraldContext>
  );
}

interface ShellProps {
  token: string;
  claims: Claims | null;
  onUnauthorized: (message: string) => void;
  onSignOut: () => void;
}

function Shell({ token, claims, onUnauthorized, onSignOut }: ShellProps) {
  const route = useRoute();
  const { projects, error } = useProjectList(token, onUnauthorized);
  const title =
    route.page === 'project' ? (projects?.find((project) => project.id === route.projectId)?.name ?? route.projectId) : null;

  let page;
  if (route.page === 'project') {
    page = (
      <ProjectPage
        projectId={route.projectId}
        projects={projects}
        token={token}
        admin={hasScope(claims, 'admin')}
        auditor={hasScope(claims, 'audit')}
      />
    );
  } else if (route.page === 'overview') {
    page = <Overview projects={projects} error={error} />;
  } else {
    page = (
      <EmptyState icon="alert" title="Nothing here">
        No page at <code>{route.path}</code>. <Link to="/">See every project</Link>
      </EmptyState>
    );
  }

  return (
    <div className="app">
      <Header title={title} user={claims?.user ?? null} onSignOut={onSignOut} />
      <main className="main">
        <ConnectionBanner />
        {page}
      </main>
    </div>
  );
}
