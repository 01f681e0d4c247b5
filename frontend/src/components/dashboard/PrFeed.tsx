// Recent pull-request notifications, newest first: what happened, to which pull request, by whom,
// when; the ones that came after the project was last read are marked unread.
import type { Notification } from '@herald/client';
import { EmptyState } from '../EmptyState';
import { ExternalLink } from '../ExternalLink';
import { RelativeTime } from '../RelativeTime';
import { StatusBadge, prActionLook } from './status';

function PrRow({ notification, unread }: { notification: Notification; unread: boolean }) {
  const { action, number, title, url, repo, author } = notification.data;
  return (
    <li className={`pr${unread ? ' unread' : ''}`} data-seq={notification.seq} data-pr={number} data-action={action}>
      <StatusBadge look={prActionLook(action)} className="pr-action" />
      <div className="pr-body">
        <ExternalLink className="pr-title" href={url}>
          {title}
        </ExternalLink>
        <div className="row-meta">
          <span className="mono">#{number}</span>
          <span className="muted">{repo}</span>
          {author ? <span>by {author}</span> : null}
          <RelativeTime iso={notification.timestamp} />
        </div>
      </div>
      {unread && (
        <span className="unread-dot" title="Unread">
          <span className="visually-hidden">unread</span>
        </span>
      )}
    </li>
  );
}

export function PrFeed({ notifications, readSeq, limit }: { notifications: Notification[]; readSeq: number; limit?: number }) {
  if (notifications.length === 0) {
    return <EmptyState title="No pull request activity yet">Opened, pushed, reviewed and merged pull requests show here.</EmptyState>;
  }
  const shown = limit === undefined ? notifications : notifications.slice(0, limit);
  return (
    <ul className="list prs">
      {shown.map((notification) => (
        <PrRow key={notification.seq} notification={notification} unread={notification.seq > readSeq} />
      ))}
    </ul>
  );
}
