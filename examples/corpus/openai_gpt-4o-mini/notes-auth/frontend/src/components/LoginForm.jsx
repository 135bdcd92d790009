import { useState } from 'react'

export default function LoginForm({ apiUrl, onLogin }) {
  const [username, setUsername] = useState('')
  const [password, setPassword] = useState('')
  const [message, setMessage] = useState('')

  const submit = async (endpoint) => {
    const res = await fetch(`${apiUrl}/${endpoint}`, {
      method: 'POST',
      credentials: 'include',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password }),
    })
    const data = await res.json()
    if (!res.ok) {
      setMessage(data.error)
      return
    }
    if (endpoint === 'login') {
      onLogin(data.username)
    } else {
      setMessage('Registered! You can now log in.')
    }
  }

  return (
    <div>
      <h2>Login or Register</h2>
      <input
        placeholder="Username"
        value={username}
        onChange={(e) => setUsername(e.target.value)}
      />
      <input
        type="password"
        placeholder="Password"
        value={password}
        onChange={(e) => setPassword(e.target.value)}
      />
      <button onClick={() => submit('login')}>Login</button>
      <button onClick={() => submit('register')}>Register</button>
      {message && <p>{message}</p>}
    </div>
  )
}
