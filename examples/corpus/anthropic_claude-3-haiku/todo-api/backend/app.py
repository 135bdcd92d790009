import os
import uuid
from datetime import datetime

from flask import Flask, jsonify, request, session

app = Flask(__name__)
app.secret_key = os.getenv('SECRET_KEY', 'dev-secret-key')

# In-memory storage for todos, keyed by session user ID
todos_by_user = {}


def get_user_todos():
    """Get the todo list for the current session, creating one if needed."""
    if 'user_id' not in session:
        session['user_id'] = str(uuid.uuid4())
    user_id = session['user_id']
    if user_id not in todos_by_user:
        todos_by_user[user_id] = []
    return todos_by_user[user_id]


def find_todo(todos, todo_id):
    """Find a todo by its ID."""
    return next((todo for todo in todos if todo['id'] == todo_id), None)


@app.route('/todos', methods=['GET'])
def list_todos():
    """Retrieve all todos for the current user."""
    todos = get_user_todos()
    return jsonify(todos), 200


@app.route('/todos', methods=['POST'])
def create_todo():
    """Create a new todo item."""
    data = request.get_json(silent=True) or {}
    title = data.get('title', '').strip()

    if not title:
        return jsonify({'error': 'Title is required'}), 400

    todos = get_user_todos()
    todo = {
        'id': str(uuid.uuid4()),
        'title': title,
        'description': data.get('description', ''),
        'completed': False,
        'created_at': datetime.utcnow().isoformat()
    }
    todos.append(todo)
    return jsonify(todo), 201


@app.route('/todos/<todo_id>', methods=['GET'])
def get_todo(todo_id):
    """Retrieve a single todo item."""
    todo = find_todo(get_user_todos(), todo_id)
    if todo is None:
        return jsonify({'error': 'Todo not found'}), 404
    return jsonify(todo), 200


@app.route('/todos/<todo_id>', methods=['PUT'])
def update_todo(todo_id):
    """Update an existing todo item."""
    todo = find_todo(get_user_todos(), todo_id)
    if todo is None:
        return jsonify({'error': 'Todo not found'}), 404

    data = request.get_json(silent=True) or {}
    todo['title'] = data.get('title', todo['title'])
    todo['description'] = data.get('description', todo['description'])
    todo['completed'] = data.get('completed', todo['completed'])
    return jsonify(todo), 200


@app.route('/todos/<todo_id>', methods=['DELETE'])
def delete_todo(todo_id):
    """Delete a todo item."""
    todos = get_user_todos()
    todo = find_todo(todos, todo_id)
    if todo is None:
        return jsonify({'error': 'Todo not found'}), 404

    todos.remove(todo)
    return jsonify({'message': 'Todo deleted'}), 200


@app.errorhandler(404)
def not_found(error):
    return jsonify({'error': 'Not found'}), 404


if __name__ == '__main__':
    app.run(debug=True, host='0.0.0.0', port=5000)
