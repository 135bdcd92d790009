import React, { useState, useEffect } from 'react';
import axios from 'axios';

const API_URL = 'http://localhost:5000/api';

function App() {
  const [token, setToken] = useState(localStorage.getItem('token'));
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [todos, setTodos] = useState([]);
  const [newTodo, setNewTodo] = useState('');

  useEffect(() => {
    if (token) {
      axios
        .get(`${API_URL}/todos`, { headers: { Authorization: `Bearer ${token}` } })
        .then((res) => setTodos(res.data))
        .catch((err) => console.error(err));
    }
  }, [token]);

  const login = async (e) => {
    e.preventDefault();
    try {
      const res = await axios.post(`${API_URL}/login`, { username, password });
      localStorage.setItem('token', res.data.token);
      setToken(res.data.token);
    } catch (err) {
      alert('Login failed');
    }
  };

  const addTodo = async (e) => {
    e.preventDefault();
    const res = await axios.post(
      `${API_URL}/todos`,
      { title: newTodo },
      { headers: { Authorization: `Bearer ${token}` } }
    );
    setTodos([...todos, res.data]);
    setNewTodo('');
  };

  if (!token) {
    return (
      <form onSubmit={login}>
        <h2>Login</h2>
        <input value={username} onChange={(e) => setUsername(e.target.value)} placeholder="Username" />
        <input type="password" value={password} onChange={(e) => setPassword(e.target.value)} placeholder="Password" />
        <button type="submit">Login</button>
      </form>
    );
  }

  return (
    <div className="App">
      <h1>My Todos</h1>
      <form onSubmit={addTodo}>
        <input value={newTodo} onChange={(e) => setNewTodo(e.target.value)} placeholder="New todo" />
        <button type="submit">Add</button>
      </form>
      <ul>
        {todos.map((todo) => (
          <li key={todo.id}>{todo.title}</li>
        ))}
      </ul>
    </div>
  );
}

export default App;
