import React, { useState } from 'react';
import ShortLink, { API_BASE } from './components/ShortLink.jsx';

function App() {
  const [url, setUrl] = useState('');
  const [links, setLinks] = useState([]);
  const [error, setError] = useState('');

  const handleSubmit = async (e) => {
    e.preventDefault();
    setError('');

    try {
      const response = await fetch(`${API_BASE}/shorten`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ url }),
      });
      const data = await response.json();

      if (!response.ok) {
        setError(data.error || 'Something went wrong');
        return;
      }

      setLinks([{ code: data.code, originalUrl: url }, ...links]);
      setUrl('');
    } catch (err) {
      setError('Could not reach the server');
    }
  };

  return (
    <div style={{ maxWidth: 600, margin: '2rem auto', fontFamily: 'system-ui' }}>
      <h1>URL Shortener</h1>
      <form onSubmit={handleSubmit}>
        <input
          type="text"
          value={url}
          onChange={(e) => setUrl(e.target.value)}
          placeholder="https://example.com/very/long/url"
          style={{ width: '70%' }}
        />
        <button type="submit">Shorten</button>
      </form>
      {error && <p style={{ color: 'crimson' }}>{error}</p>}
      {links.map((link) => (
        <ShortLink key={link.code} code={link.code} originalUrl={link.originalUrl} />
      ))}
    </div>
  );
}

export default App;
