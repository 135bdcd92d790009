import React from 'react';

export const API_BASE = 'http://localhost:8080';

export default function ShortLink({ code, originalUrl }) {
  const shortUrl = `${API_BASE}/${code}`;

  const copyToClipboard = () => {
    navigator.clipboard.writeText(shortUrl);
  };

  return (
    <div className="short-link">
      <p>
        <strong>Original:</strong> {originalUrl}
      </p>
      <p>
        <strong>Short URL:</strong>{' '}
        <a href={shortUrl} target="_blank" rel="noopener noreferrer">
          {shortUrl}
        </a>
      </p>
      <button onClick={copyToClipboard}>Copy</button>
    </div>
  );
}
