// The bar at the top of every page: where you are, the connection, unread notifications, who is
// signed in.
import { useEffect } from 'react';
import { totalUnread } from '@herald/client';
import { useProjectStore } from '@herald/client/react';
import { ConnectionIndicator } from './dashboard/ConnectionIndicator';
import { Icon } from './Icon';
import { Link } from './Link';

export function Logo() {
  return (
    <svg className="logo" viewBox="0 0 24 24" width="24" height="24" aria-hidden="true" focusable="false">
      <rect width="24" height="24" rx="6" fill="currentColor" />
      <path d="M7 17V7M17 17V7M7 12h10" stroke="#fff" strokeWidth="2.4" strokeLinecap="round" fill="none" />
    </svg>
  );
}

function UnreadTotal() {
  const unread = useProjectStore(totalUnread);
  useEffect(() => {
    document.title = unread > 0 ? `(${unread}) Herald` : 'Herald';
  }, [unread]);
  if (unread === 0) return null;
  return (
    <span className="unread-total" data-unread-total={unread}>
      <Icon name="bell" />
      {unread} unread
    </span>
  );
}

export function Header({ title, user, onSignOut }: { title: string | null; user: string | null; onSignOut: () => void }) {
  return (
    <header className="topbar">
      <div className="topbar-inner">
        <Link to="/" className="brand" aria-label="Herald: every project">
          <Logo />
          <span>Herald</span>
        </Link>
        {title !== null && (
          <span className="crumb" aria-current="page">
            {title}
          </span>
        )}
        <div className="topbar-status">
          <UnreadTotal />
          <ConnectionIndicator />
        </div>
        <div className="topbar-user">
          {user !== null && (
            <span className="user" title="Signed in as">
              {user}
            </span>
          )}
          <button type="button" className="link-button" onClick={onSignOut}>
            Sign out
          </button>
        </div>
      </div>
    </header>
  );
}
