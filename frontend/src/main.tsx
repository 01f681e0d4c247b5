import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import App from './App';
import './index.css';

const root = document.getElementById('root');
if (root === null) {
  throw new Error('index.html has no #root element');
}

createRoot(root, {
  // An error an ErrorBoundary caught is handled (the part shows it and offers a retry): a warning for
  // whoever debugs, not an error.
  onCaughtError(error, info) {
    console.warn('Herald: a part of the page failed to render', error, info.componentStack);
  },
}).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
