import type { ReactNode } from 'react';

/** `url` when it is an http(s) URL; anything else (javascript:, data:...) from an event is not a link. */
export function safeUrl(url: string | null | undefined): string | null {
  if (!url) return null;
  try {
    const parsed = new URL(url);
    return parsed.protocol === 'https:' || parsed.protocol === 'http:' ? parsed.href : null;
  } catch {
    return null;
  }
}

/** A link out of the dashboard (a pull request, a CI run), in a new tab; plain text when unsafe. */
export function ExternalLink({ href, className, children }: { href: string | null | undefined; className?: string; children: ReactNode }) {
  const url = safeUrl(href);
  if (url === null) return <span className={className}>{children}</span>;
  return (
    <a className={className} href={url} target="_blank" rel="noopener noreferrer">
      {children}
    </a>
  );
}
