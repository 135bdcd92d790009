import React, { useState, useEffect } from 'react';
import axios from 'axios';

axios.defaults.withCredentials = true;

const API = 'http://localhost:5000';

function App() {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [loggedIn, setLoggedIn] = useState(false);
  const [notes, setNotes] = useState([]);
  const [title, setTitle] = useState('');
  const [content, setContent] = useState('');

  useEffect(() => {
    if (loggedIn) {
      axios.get(`${API}/notes`).then((response) => {
        setNotes(response.data);
      });
    }
  }, [loggedIn]);

  const handleLogin = () => {
    axios.post(`${API}/login`, { username, password })
      .then(() => setLoggedIn(true))
      .catch((error) => console.log(error));
  };

  const handleRegister = () => {
    axios.post(`${API}/register`, { username, password })
      .then(() => alert('User created successfully'))
      .catch((error) => console.log(error));
  };

  const handleCreateNote = () => {
    axios.post(`${API}/notes`, { title, content })
      .then(() => {
        setNotes([...notes, { title, content }]);
        setTitle('');
        setContent('');
      })
      .catch((error) => console.log(error));
  };

  const handleDeleteNote = (id) => {
    axios.delete(`${API}/notes/${id}`)
      .then(() => setNotes(notes.filter((note) => note.id !== id)))
      .catch((error) => console.log(error));
  };

  if (!loggedIn) {
    return (
      <div>
        <h1>Login</h1>
        <input type="text" value={username} onChange={(e) => setUsername(e.target.value)} placeholder="Username" />
        <input type="password" value={password} onChange={(e) => setPassword(e.target.value)} placeholder="Password" />
        <button onClick={handleLogin}>Login</button>
        <button onClick={handleRegister}>Register</button>
      </div>
    );
  }

  return (
    <div>
      <h1>Notes</h1>
      <input type="text" value={title} onChange={(e) => setTitle(e.target.value)} placeholder="Title" />
      <textarea value={content} onChange={(e) => setContent(e.target.value)} placeholder="Content" />
      <button onClick={handleCreateNote}>Create Note</button>
      <ul>
        {notes.map((note) => (
          <li key={note.id}>
            <h2>{note.title}</h2>
            <p>{note.content}</p>
            <button onClick={() => handleDeleteNote(note.id)}>Delete</button>
          </li>
        ))}
      </ul>
    </div>
  );
}

export default App;
