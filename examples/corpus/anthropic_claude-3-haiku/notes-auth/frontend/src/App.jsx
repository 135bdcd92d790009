import React, { useEffect, useState } from 'react';
import { apiRequest, clearToken, getToken, setToken } from './auth.js';

function App() {
  const [isLoggedIn, setIsLoggedIn] = useState(!!getToken());
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [notes, setNotes] = useState([]);
  const [title, setTitle] = useState('');
  const [body, setBody] = useState('');
  const [error, setError] = useState('');

  useEffect(() => {
    if (isLoggedIn) {
      apiRequest('/notes')
        .then(setNotes)
        .catch((err) => setError(err.message));
    }
  }, [isLoggedIn]);

  const handleAuth = async (mode) => {
    setError('');
    try {
      if (mode === 'register') {
        await apiRequest('/register', {
          method: 'POST',
          body: JSON.stringify({ username, password }),
        });
      }
      const data = await apiRequest('/login', {
        method: 'POST',
        body: JSON.stringify({ username, password }),
      });
      setToken(data.token);
      setIsLoggedIn(true);
    } catch (err) {
      setError(err.message);
    }
  };

  const handleAddNote = async (e) => {
    e.preventDefault();
    try {
      const note = await apiRequest('/notes', {
        method: 'POST',
        body: JSON.stringify({ title, body }),
      });
      setNotes([note, ...notes]);
      setTitle('');
      setBody('');
    } catch (err) {
      setError(err.message);
    }
  };

  const handleLogout = () => {
    clearToken();
    setIsLoggedIn(false);
    setNotes([]);
  };

  if (!isLoggedIn) {
    return (
      <div className="auth">
        <h1>Secure Notes</h1>
        {error && <p className="error">{error}</p>}
        <input value={username} onChange={(e) => setUsername(e.target.value)} placeholder="Username" />
        <input type="password" value={password} onChange={(e) => setPassword(e.target.value)} placeholder="Password" />
        <button onClick={() => handleAuth('login')}>Log In</button>
        <button onClick={() => handleAuth('register')}>Sign Up</button>
      </div>
    );
  }

  return (
    <div className="notes">
      <header>
        <h1>My Notes</h1>
        <button onClick={handleLogout}>Log Out</button>
      </header>
      {error && <p className="error">{error}</p>}
      <form onSubmit={handleAddNote}>
        <input value={title} onChange={(e) => setTitle(e.target.value)} placeholder="Title" />
        <textarea value={body} onChange={(e) => setBody(e.target.value)} placeholder="Write something..." />
        <button type="submit">Add Note</button>
      </form>
      {notes.map((note) => (
        <article key={note.id}>
          <h3>{note.title}</h3>
          <p>{note.body}</p>
        </article>
      ))}
    </div>
  );
}

export default App;
