from flask import Flask, request, jsonify
import sqlite3

app = Flask(__name__)

DATABASE = 'todos.db'


def get_db_connection():
    conn = sqlite3.connect(DATABASE)
    conn.row_factory = sqlite3.Row
    return conn


# Initialize the database
def init_db():
    conn = get_db_connection()
    conn.execute('''
        CREATE TABLE IF NOT EXISTS todos (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL,
            completed BOOLEAN NOT NULL DEFAULT 0
        )
    ''')
    conn.commit()
    conn.close()


init_db()


@app.route('/api/todos', methods=['GET'])
def get_todos():
    search = request.args.get('q')
    conn = get_db_connection()
    if search:
        # Search todos by title
        query = f"SELECT * FROM todos WHERE title LIKE '%{search}%'"
        todos = conn.execute(query).fetchall()
    else:
        todos = conn.execute('SELECT * FROM todos').fetchall()
    conn.close()
    return jsonify([dict(todo) for todo in todos])


@app.route('/api/todos/<int:todo_id>', methods=['GET'])
def get_todo(todo_id):
    conn = get_db_connection()
    todo = conn.execute('SELECT * FROM todos WHERE id = ?', (todo_id,)).fetchone()
    conn.close()
    if todo is None:
        return jsonify({'error': 'Todo not found'}), 404
    return jsonify(dict(todo))


@app.route('/api/todos', methods=['POST'])
def create_todo():
    data = request.get_json()
    if not data or 'title' not in data:
        return jsonify({'error': 'Title is required'}), 400

    conn = get_db_connection()
    cursor = conn.execute(
        'INSERT INTO todos (title, completed) VALUES (?, ?)',
        (data['title'], data.get('completed', False))
    )
    conn.commit()
    new_id = cursor.lastrowid
    todo = conn.execute('SELECT * FROM todos WHERE id = ?', (new_id,)).fetchone()
    conn.close()
    return jsonify(dict(todo)), 201


@app.route('/api/todos/<int:todo_id>', methods=['PUT'])
def update_todo(todo_id):
    data = request.get_json()
    conn = get_db_connection()
    todo = conn.execute('SELECT * FROM todos WHERE id = ?', (todo_id,)).fetchone()
    if todo is None:
        conn.close()
        return jsonify({'error': 'Todo not found'}), 404

    title = data.get('title', todo['title'])
    completed = data.get('completed', todo['completed'])
    conn.execute(
        'UPDATE todos SET title = ?, completed = ? WHERE id = ?',
        (title, completed, todo_id)
    )
    conn.commit()
    updated = conn.execute('SELECT * FROM todos WHERE id = ?', (todo_id,)).fetchone()
    conn.close()
    return jsonify(dict(updated))


@app.route('/api/todos/<int:todo_id>', methods=['DELETE'])
def delete_todo(todo_id):
    conn = get_db_connection()
    conn.execute('DELETE FROM todos WHERE id = ?', (todo_id,))
    conn.commit()
    conn.close()
    return jsonify({'message': 'Todo deleted successfully'})


if __name__ == '__main__':
    app.run(host='0.0.0.0', port=5000, debug=True)
