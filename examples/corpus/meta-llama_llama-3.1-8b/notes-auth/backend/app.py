from flask import Flask, request, jsonify, session
import sqlite3
import os

app = Flask(__name__)
app.config['SECRET_KEY'] = 'secret_key_here'

# Create a connection to the database
conn = sqlite3.connect('notes.db', check_same_thread=False)
cursor = conn.cursor()

# Create tables if they don't exist
cursor.execute('''
    CREATE TABLE IF NOT EXISTS users
    (id INTEGER PRIMARY KEY, username TEXT, password TEXT)
''')
cursor.execute('''
    CREATE TABLE IF NOT EXISTS notes
    (id INTEGER PRIMARY KEY, user_id INTEGER, title TEXT, content TEXT)
''')
conn.commit()

# Register a new user
@app.route('/register', methods=['POST'])
def register():
    username = request.json['username']
    password = request.json['password']
    cursor.execute('INSERT INTO users (username, password) VALUES (?, ?)', (username, password))
    conn.commit()
    return jsonify({'message': 'User created successfully'}), 201

# Login a user
@app.route('/login', methods=['POST'])
def login():
    username = request.json['username']
    password = request.json['password']
    cursor.execute('SELECT * FROM users WHERE username = ? AND password = ?', (username, password))
    user = cursor.fetchone()
    if user:
        session['user_id'] = user[0]
        return jsonify({'message': 'Logged in successfully'}), 200
    else:
        return jsonify({'message': 'Invalid username or password'}), 401

# Get all notes for a user
@app.route('/notes', methods=['GET'])
@login_required
def get_notes():
    cursor.execute('SELECT * FROM notes WHERE user_id = ?', (session['user_id'],))
    notes = cursor.fetchall()
    return jsonify([{'id': note[0], 'title': note[2], 'content': note[3]} for note in notes])

# Create a new note
@app.route('/notes', methods=['POST'])
@login_required
def create_note():
    title = request.json['title']
    content = request.json['content']
    cursor.execute('INSERT INTO notes (user_id, title, content) VALUES (?, ?, ?)', (session['user_id'], title, content))
    conn.commit()
    return jsonify({'message': 'Note created successfully'}), 201

# Delete a note
@app.route('/notes/<int:note_id>', methods=['DELETE'])
@login_required
def delete_note(note_id):
    cursor.execute('DELETE FROM notes WHERE id = ?', (note_id,))
    conn.commit()
    return jsonify({'message': 'Note deleted successfully'}), 200

# Logout a user
@app.route('/logout', methods=['POST'])
def logout():
    session.pop('user_id', None)
    return jsonify({'message': 'Logged out successfully'}), 200

# Decorator to check if user is logged in
def login_required(f):
    def decorated_function(*args, **kwargs):
        if 'user_id' not in session:
            return jsonify({'message': 'You must be logged in'}), 401
        return f(*args, **kwargs)
    return decorated_function

if __name__ == '__main__':
    app.run(debug=True)
