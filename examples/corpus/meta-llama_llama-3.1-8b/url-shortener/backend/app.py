Here's a simple URL shortener using Flask:

```python
from flask import Flask, request, jsonify, redirect
import sqlite3
import string
import random

app = Flask(__name__)

# Connect to the database
def get_db():
    conn = sqlite3.connect('urls.db')
    return conn

# Create the table
def create_table():
    conn = get_db()
    c = conn.cursor()
    c.execute('''CREATE TABLE IF NOT EXISTS urls
                 (id INTEGER PRIMARY KEY AUTOINCREMENT, original_url TEXT, short_code TEXT)''')
    conn.commit()
    conn.close()

# Generate a random short code
def generate_short_code(length=6):
    characters = string.ascii_letters + string.digits
    return ''.join(random.choice(characters) for _ in range(length))

@app.route('/shorten', methods=['POST'])
def shorten_url():
    data = request.get_json()
    original_url = data['url']
    short_code = generate_short_code()
    conn = get_db()
    c = conn.cursor()
    c.execute("INSERT INTO urls (original_url, short_code) VALUES (?, ?)", (original_url, short_code))
    conn.commit()
    conn.close()
    return jsonify({'short_url': request.host_url + short_code})

@app.route('/<short_code>')
def redirect_url(short_code):
    conn = get_db()
    c = conn.cursor()
    c.execute("SELECT original_url FROM urls WHERE short_code = ?", (short_code,))
    result = c.fetchone()
    conn.close()
    if result:
        return redirect(result[0])
    else:
        return jsonify({'error': 'URL not found'}), 404

if __name__ == '__main__':
    create_table()
    app.run(debug=True)
```

This code creates a simple URL shortener with two endpoints:

* `/shorten`: This endpoint accepts a POST request with a JSON body containing the original URL. It generates a random short code, stores the original URL and short code in the database, and returns the shortened URL.
* `/<short_code>`: This endpoint redirects the user to the original URL associated with the given short code.

To run the application, save this code to a file named `app.py` and run it using `python app.py`. You can then use a tool like `curl` to test the endpoints:

```bash
curl -X POST -H "Content-Type: application/json" -d '{"url": "https://www.example.com"}' http://localhost:5000/shorten
```

This should return a JSON response with the shortened URL. You can then visit the shortened URL in your web browser to be redirected to the original URL.

Note: This is a very basic implementation and you may want to add additional features such as error handling, validation, and security measures to a production-ready application.
