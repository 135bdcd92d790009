import { useEffect, useState } from 'react'
import Column from './components/Column.jsx'

const COLUMNS = [
  { key: 'todo', title: 'To Do' },
  { key: 'in_progress', title: 'In Progress' },
  { key: 'done', title: 'Done' },
]

function App() {
  const [boards, setBoards] = useState([])
  const [activeBoard, setActiveBoard] = useState(null)
  const [cards, setCards] = useState([])
  const [boardName, setBoardName] = useState('')
  const [cardTitle, setCardTitle] = useState('')

  useEffect(() => {
    fetch('/api/boards')
      .then((res) => res.json())
      .then(setBoards)
  }, [])

  useEffect(() => {
    if (!activeBoard) return
    fetch(`/api/boards/${activeBoard.id}/cards`)
      .then((res) => res.json())
      .then(setCards)
  }, [activeBoard])

  const createBoard = async (e) => {
    e.preventDefault()
    const res = await fetch('/api/boards', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: boardName }),
    })
    const board = await res.json()
    setBoards([...boards, board])
    setActiveBoard(board)
    setBoardName('')
  }

  const createCard = async (e) => {
    e.preventDefault()
    const res = await fetch(`/api/boards/${activeBoard.id}/cards`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ title: cardTitle, column: 'todo' }),
    })
    const card = await res.json()
    setCards([...cards, card])
    setCardTitle('')
  }

  const moveCard = async (card, column) => {
    const res = await fetch(`/api/boards/${activeBoard.id}/cards/${card.id}`, {
      method: 'PUT',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ column }),
    })
    const updated = await res.json()
    setCards(cards.map((c) => (c.id === updated.id ? updated : c)))
  }

  const deleteCard = async (cardId) => {
    await fetch(`/api/boards/${activeBoard.id}/cards/${cardId}`, { method: 'DELETE' })
    setCards(cards.filter((c) => c.id !== cardId))
  }

  return (
    <div style={{ padding: 20 }}>
      <h1>Kanban Board</h1>
      <form onSubmit={createBoard}>
        <input value={boardName} onChange={(e) => setBoardName(e.target.value)} placeholder="New board name" />
        <button type="submit">Create Board</button>
      </form>
      <div>
        {boards.map((board) => (
          <button key={board.id} onClick={() => setActiveBoard(board)}>
            {board.name}
          </button>
        ))}
      </div>

      {activeBoard && (
        <>
          <h2>{activeBoard.name}</h2>
          <form onSubmit={createCard}>
            <input value={cardTitle} onChange={(e) => setCardTitle(e.target.value)} placeholder="Card title" />
            <button type="submit">Add Card</button>
          </form>
          <div style={{ display: 'flex' }}>
            {COLUMNS.map((col) => (
              <Column
                key={col.key}
                title={col.title}
                column={col.key}
                cards={cards}
                onMove={moveCard}
                onDelete={deleteCard}
              />
            ))}
          </div>
        </>
      )}
    </div>
  )
}

export default App
