// A user's TypeScript against the packed @herald/client, compiled by tests/pack.test.ts with
// `tsc --strict`: both entries resolve through the exports map, and their types are real (an
// expected error that does not happen, because a type came out as `any`, fails the compile).
import {
  CloseCode,
  TERMINAL_CLOSE_CODES,
  createClient,
  createProjectStore,
  memoryStorage,
  type ClientOptions,
  type Project,
  type ProjectInfo,
  type TransportKind,
  type WebSocketMessage,
} from '@herald/client';
import { HeraldContext, useConnectionState, useProjectStore, useWebSocket } from '@herald/client/react';

const options: ClientOptions = { token: () => 'token', baseUrl: 'http://localhost:8000', storage: memoryStorage() };
export const client = createClient(options);
export const store = createProjectStore({ client });

client.on('message', (event: WebSocketMessage) => {
  if (event.type === 'agent_run_progress') {
    const progress: number = event.data.progress;
    // @ts-expect-error an agent run's progress is a number
    const wrong: string = event.data.progress;
    console.log(progress, wrong);
  }
});

// @ts-expect-error the client takes a token
createClient({ baseUrl: 'http://localhost:8000' });

export const terminal: boolean = TERMINAL_CLOSE_CODES.has(CloseCode.AUTH);
export const listed: (info: ProjectInfo) => string = (info) => info.id;

export function useStatus(): string {
  return useWebSocket(client).state.status;
}

export function useTransport(): TransportKind | null {
  return useConnectionState(client).transport;
}

export function useProjectOf(projectId: string): Project | undefined {
  return useProjectStore((state) => state.projects[projectId], store);
}

export { HeraldContext };
