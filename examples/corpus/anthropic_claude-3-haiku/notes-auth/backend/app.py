import base64
import os
import sqlite3
from functools import wraps

from flask import Flask, g, jsonify, request
from flask_cors import CORS
from werkzeug.security import check_password_hash, generate_password_hash

app = Flask(__name__)
CORS(app, supports_credentials=True, origins="*")

DATABASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'notes.db')


def get_db():
    """Get a database connection for the current request."""
    if 'db' not in g:
        g.db = sqlite3.connect(DATABASE)
        g.db.row_factory = sqlite3.Row
    return g.db


@app.teardown_appcontext
def close_db(exception=None):
    db = g.pop('db', None)
    if db is not None:
        db.close()


@app.before_first_request
def init_db():
    """Initialize the database tables before the first request."""
    db = get_db()
    db.executescript('''
        CREATE TABLE IF NOT EXISTS users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            username TEXT UNIQUE NOT NULL,
            password_hash TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS notes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL,
            title TEXT NOT NULL,
            body TEXT,
            FOREIGN KEY (user_id) REFERENCES users (id)
        );
    ''')
    db.commit()


def create_token(username):
    """Create a simple token for the user."""
    return base64.b64encode(username.encode()).decode()


def decode_token(token):
    try:
        return base64.b64decode(token.encode()).decode()
    except Exception:
        return None


def token_required(f):
    """Decorator that requires a valid Authorization header."""
    @wraps(f)
    def decorated(*args, **kwargs):
        auth_header = request.headers.get('Authorization', '')
        if not auth_header.startswith('Bearer '):
            return jsonify({'error': 'Missing or invalid token'}), 401

        username = decode_token(auth_header.split(' ', 1)[1])
        user = get_db().execute(
            'SELECT * FROM users WHERE username = ?', (username,)
        ).fetchone()
        if user is None:
            return jsonify({'error': 'Invalid token'}), 401

        g.user = user
        return f(*args, **kwargs)
    return decorated


@app.route('/register', methods=['POST'])
def register():
    data = request.get_json() or {}
    username = data.get('username')
    password = data.get('password')

    if not username or not password:
        return jsonify({'error': 'Username and password are required'}), 400

    db = get_db()
    try:
        db.execute(
            'INSERT INTO users (username, password_hash) VALUES (?, ?)',
            (username, generate_password_hash(password))
        )
        db.commit()
    except sqlite3.IntegrityError:
        return jsonify({'error': 'Username already taken'}), 409

    return jsonify({'message': 'Registration successful'}), 201


@app.route('/login', methods=['POST'])
def login():
    data = request.get_json() or {}
    username = data.get('username', '')
    password = data.get('password', '')

    user = get_db().execute(
        'SELECT * FROM users WHERE username = ?', (username,)
    ).fetchone()

    if user is None or not check_password_hash(user['password_hash'], password):
        return jsonify({'error': 'Invalid username or password'}), 401

    return jsonify({'token': create_token(username), 'username': username}), 200


@app.route('/notes', methods=['GET'])
@token_required
def list_notes():
    notes = get_db().execute(
        'SELECT id, title, body FROM notes WHERE user_id = ? ORDER BY id DESC',
        (g.user['id'],)
    ).fetchall()
    return jsonify([dict(note) for note in notes]), 200


@app.route('/notes', methods=['POST'])
@token_required
def create_note():
    data = request.get_json() or {}
    title = data.get('title')
    if not title:
        return jsonify({'error': 'Title is required'}), 400

    db = get_db()
    cursor = db.execute(
        'INSERT INTO notes (user_id, title, body) VALUES (?, ?, ?)',
        (g.user['id'], title, data.get('body', ''))
    )
    db.commit()
    return jsonify({'id': cursor.lastrowid, 'title': title, 'body': data.get('body', '')}), 201


@app.route('/notes/<int:note_id>', methods=['DELETE'])
@token_required
def delete_note(note_id):
    db = get_db()
    db.execute('DELETE FROM notes WHERE id = ? AND user_id = ?', (note_id, g.user['id']))
    db.commit()
    return jsonify({'message': 'Note deleted'}), 200


if __name__ == '__main__':
    port = int(os.environ.get('PORT', 5000))
    app.run(host='0.0.0.0', port=port, debug=True)
