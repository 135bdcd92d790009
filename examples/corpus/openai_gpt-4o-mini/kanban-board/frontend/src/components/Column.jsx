const NEXT_COLUMN = { todo: 'in_progress', in_progress: 'done' }

export default function Column({ title, column, cards, onMove, onDelete }) {
  return (
    <div className="column" style={{ flex: 1, padding: 10, background: '#eee', margin: 5 }}>
      <h3>{title}</h3>
      {cards
        .filter((card) => card.column === column)
        .map((card) => (
          <div key={card.id} className="card" style={{ background: '#fff', padding: 8, marginBottom: 8 }}>
            <strong>{card.title}</strong>
            {card.description && <p>{card.description}</p>}
            {NEXT_COLUMN[column] && (
              <button onClick={() => onMove(card, NEXT_COLUMN[column])}>Move →</button>
            )}
            <button onClick={() => onDelete(card.id)}>Delete</button>
          </div>
        ))}
    </div>
  )
}
