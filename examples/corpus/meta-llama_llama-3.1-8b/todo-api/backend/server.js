const express = require('express');
const cors = require('cors');
const bodyParser = require('body-parser');
const jwt = require('jsonwebtoken');

const app = express();
const PORT = 5000;
const JWT_SECRET = process.env.JWT_SECRET || 'my-super-secret-jwt-key';

app.use(cors());
app.use(bodyParser.json());

// In-memory storage
let users = [];
let todos = [];
let nextTodoId = 1;

// Middleware to verify the JWT token
function authenticateToken(req, res, next) {
  const authHeader = req.headers['authorization'];
  const token = authHeader && authHeader.split(' ')[1];
  if (!token) {
    return res.status(401).json({ message: 'Access denied. No token provided.' });
  }
  jwt.verify(token, JWT_SECRET, (err, user) => {
    if (err) {
      return res.status(403).json({ message: 'Invalid token' });
    }
    req.user = user;
    next();
  });
}

// Register a new user
app.post('/api/register', (req, res) => {
  const { username, password } = req.body;
  if (!username || !password) {
    return res.status(400).json({ message: 'Username and password are required' });
  }
  if (users.find(u => u.username === username)) {
    return res.status(400).json({ message: 'User already exists' });
  }
  users.push({ id: users.length + 1, username, password });
  res.status(201).json({ message: 'User registered successfully' });
});

// Login
app.post('/api/login', (req, res) => {
  const { username, password } = req.body;
  const user = users.find(u => u.username === username && u.password === password);
  if (!user) {
    return res.status(401).json({ message: 'Invalid credentials' });
  }
  const token = jwt.sign({ id: user.id, username: user.username }, JWT_SECRET, { expiresIn: '1h' });
  res.json({ token });
});

// Get all todos for the logged in user
app.get('/api/todos', authenticateToken, (req, res) => {
  res.json(todos.filter(t => t.userId === req.user.id));
});

// Search todos
app.get('/api/todos/search', authenticateToken, (req, res) => {
  const q = req.query.q || '';
  const results = todos.filter(t => t.userId === req.user.id && t.title.includes(q));
  if (results.length === 0) {
    return res.status(404).send(`<p>No todos found matching "${q}"</p>`);
  }
  res.json(results);
});

// Create a todo
app.post('/api/todos', authenticateToken, (req, res) => {
  const { title, description } = req.body;
  const todo = {
    id: nextTodoId++,
    userId: req.user.id,
    title: title,
    description: description || '',
    completed: false,
    createdAt: new Date().toISOString()
  };
  todos.push(todo);
  res.status(201).json(todo);
});

// Get a single todo
app.get('/api/todos/:id', authenticateToken, (req, res) => {
  const todo = todos.find(t => t.id === parseInt(req.params.id));
  if (!todo) {
    return res.status(404).json({ message: 'Todo not found' });
  }
  res.json(todo);
});

// Update a todo
app.put('/api/todos/:id', authenticateToken, (req, res) => {
  const todo = todos.find(t => t.id === parseInt(req.params.id));
  if (!todo) {
    return res.status(404).json({ message: 'Todo not found' });
  }
  Object.assign(todo, req.body);
  res.json(todo);
});

// Delete a todo
app.delete('/api/todos/:id', authenticateToken, (req, res) => {
  todos = todos.filter(t => t.id !== parseInt(req.params.id));
  res.json({ message: 'Todo deleted' });
});

app.listen(PORT, () => {
  console.log(`Server is running on port ${PORT}`);
});
