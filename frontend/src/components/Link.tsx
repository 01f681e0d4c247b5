import type { MouseEvent, ReactNode } from 'react';
import { navigate } from '../route';

/** A link inside the dashboard: a plain <a> (open in a new tab works), followed without a reload. */
export function Link({ to, className, children, ...rest }: { to: string; className?: string; children: ReactNode; 'aria-label'?: string }) {
  const follow = (event: MouseEvent<HTMLAnchorElement>) => {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    navigate(to);
  };
  return (
    <a href={to} className={className} onClick={follow} {...rest}>
      {children}
    </a>
  );
}
