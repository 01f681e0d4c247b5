// What a list or a page shows when there is nothing in it yet: a short line, and what to do.
import type { ReactNode } from 'react';
import { Icon, type IconName } from './Icon';

export function EmptyState({ icon = 'minus', title, children }: { icon?: IconName; title: string; children?: ReactNode }) {
  return (
    <div className="empty">
      <Icon name={icon} />
      <div>
        <p className="empty-title">{title}</p>
        {children !== undefined && <div className="empty-hint">{children}</div>}
      </div>
    </div>
  );
}
