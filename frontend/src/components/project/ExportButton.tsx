// Export (audit scope): every event the history's filters match, as ndjson or csv. The token is a
// Bearer token, so a plain download link cannot carry it: the file is fetched with the header and
// saved from memory through an object URL, with the bytes received shown meanwhile.
import { useEffect, useRef, useState } from 'react';
import { HeraldError } from '@herald/client';
import { exportEvents, type EventFilter, type ExportFormat } from '../../api';

type Progress =
  | { status: 'idle' }
  | { status: 'downloading'; format: ExportFormat; received: number; total: number | null }
  | { status: 'saved'; filename: string; bytes: number }
  | { status: 'failed'; message: string };

const FORMATS: { format: ExportFormat; label: string }[] = [
  { format: 'ndjson', label: 'NDJSON' },
  { format: 'csv', label: 'CSV' },
];

/** "850 B", "12.3 kB", "4.1 MB" (powers of 1000, as file sizes are shown to people). */
export function formatBytes(bytes: number): string {
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1_000_000) return `${(bytes / 1000).toFixed(1)} kB`;
  return `${(bytes / 1_000_000).toFixed(1)} MB`;
}

export function exportFilename(projectId: string, format: ExportFormat): string {
  return `${projectId.replace(/[^\w.-]+/g, '_')}-events.${format}`;
}

/** Hands `blob` to the browser as a download named `filename`. */
function save(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  // Revoking at once can cancel the download in some browsers; the blob is freed a little later.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export function ExportButton({ projectId, token, filter }: { projectId: string; token: string; filter: EventFilter }) {
  const [progress, setProgress] = useState<Progress>({ status: 'idle' });
  const download = useRef<AbortController | null>(null);

  useEffect(() => () => download.current?.abort(), []);

  const start = (format: ExportFormat) => {
    download.current?.abort();
    const controller = new AbortController();
    download.current = controller;
    setProgress({ status: 'downloading', format, received: 0, total: null });
    const onProgress = (received: number, total: number | null) => {
      if (!controller.signal.aborted) setProgress({ status: 'downloading', format, received, total });
    };
    exportEvents(projectId, format, filter, { token, signal: controller.signal, onProgress }).then(
      (blob) => {
        if (controller.signal.aborted) return;
        const filename = exportFilename(projectId, format);
        save(blob, filename);
        setProgress({ status: 'saved', filename, bytes: blob.size });
      },
      (error: unknown) => {
        if (controller.signal.aborted) return;
        const message =
          error instanceof HeraldError && error.status === 403
            ? 'this token needs the audit scope'
            : error instanceof Error
              ? error.message
              : String(error);
        setProgress({ status: 'failed', message });
      },
    );
  };

  const cancel = () => {
    download.current?.abort();
    setProgress({ status: 'idle' });
  };

  const busy = progress.status === 'downloading';
  return (
    <div className="export" role="group" aria-label="Export the events shown">
      <span className="muted" aria-hidden="true">
        Export
      </span>
      {FORMATS.map(({ format, label }) => (
        <button
          key={format}
          type="button"
          className="button button-small"
          aria-label={`Export ${label}`}
          disabled={busy}
          onClick={() => start(format)}
        >
          {label}
        </button>
      ))}
      {progress.status === 'downloading' && (
        <>
          <span className="export-note muted" role="status">
            Downloading… {formatBytes(progress.received)}
            {progress.total !== null && ` of ${formatBytes(progress.total)}`}
          </span>
          <button type="button" className="link-button" onClick={cancel}>
            Cancel
          </button>
        </>
      )}
      {progress.status === 'saved' && (
        <span className="export-note muted" role="status">
          Saved {progress.filename} ({formatBytes(progress.bytes)})
        </span>
      )}
      {progress.status === 'failed' && (
        <span className="export-note tone-failure" role="alert">
          Could not export: {progress.message}
        </span>
      )}
    </div>
  );
}
