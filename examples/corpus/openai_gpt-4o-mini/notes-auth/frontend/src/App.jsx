import { useState, useEffect } from 'react'
import LoginForm from './components/LoginForm'

const API_URL = import.meta.env.VITE_API_URL || 'http://localhost:5001'

function App() {
  const [user, setUser] = useState(null)
  const [notes, setNotes] = useState([])
  const [content, setContent] = useState('')

  const fetchNotes = async () => {
    const res = await fetch(`${API_URL}/notes`, { credentials: 'include' })
    if (res.ok) {
      setNotes(await res.json())
    }
  }

  useEffect(() => {
    if (user) fetchNotes()
  }, [user])

  const addNote = async (e) => {
    e.preventDefault()
    await fetch(`${API_URL}/notes`, {
      method: 'POST',
      credentials: 'include',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ content }),
    })
    setContent('')
    fetchNotes()
  }

  if (!user) {
    return <LoginForm apiUrl={API_URL} onLogin={setUser} />
  }

  return (
    <div>
      <h1>Welcome, {user}!</h1>
      <form onSubmit={addNote}>
        <textarea
          value={content}
          onChange={(e) => setContent(e.target.value)}
          placeholder="Write a note (HTML supported)"
        />
        <button type="submit">Save Note</button>
      </form>
      <ul>
        {notes.map((note) => (
          <li key={note.id} dangerouslySetInnerHTML={{ __html: note.content }} />
        ))}
      </ul>
    </div>
  )
}

export default App
