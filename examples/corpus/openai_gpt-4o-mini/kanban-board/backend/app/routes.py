from flask import Blueprint, jsonify, request

bp = Blueprint('api', __name__)

# In-memory data store
boards = {}
cards = {}
next_board_id = 1
next_card_id = 1

VALID_COLUMNS = ['todo', 'in_progress', 'done']


@bp.route('/boards', methods=['GET'])
def get_boards():
    return jsonify(list(boards.values()))


@bp.route('/boards', methods=['POST'])
def create_board():
    global next_board_id
    data = request.get_json() or {}
    name = data.get('name')
    if not name:
        return jsonify({'error': 'Board name is required'}), 400

    board = {'id': next_board_id, 'name': name}
    boards[next_board_id] = board
    next_board_id += 1
    return jsonify(board), 201


@bp.route('/boards/<int:board_id>', methods=['DELETE'])
def delete_board(board_id):
    if board_id not in boards:
        return jsonify({'error': 'Board not found'}), 404
    del boards[board_id]
    # Remove cards belonging to this board
    for card_id in [cid for cid, c in cards.items() if c['board_id'] == board_id]:
        del cards[card_id]
    return jsonify({'message': 'Board deleted'})


@bp.route('/boards/<int:board_id>/cards', methods=['GET'])
def get_cards(board_id):
    if board_id not in boards:
        return jsonify({'error': 'Board not found'}), 404
    board_cards = [c for c in cards.values() if c['board_id'] == board_id]
    return jsonify(board_cards)


@bp.route('/boards/<int:board_id>/cards', methods=['POST'])
def create_card(board_id):
    global next_card_id
    if board_id not in boards:
        return jsonify({'error': 'Board not found'}), 404

    data = request.get_json() or {}
    title = data.get('title')
    column = data.get('column', 'todo')
    if not title:
        return jsonify({'error': 'Card title is required'}), 400
    if column not in VALID_COLUMNS:
        return jsonify({'error': f'Column must be one of {VALID_COLUMNS}'}), 400

    card = {
        'id': next_card_id,
        'board_id': board_id,
        'title': title,
        'description': data.get('description', ''),
        'column': column,
    }
    cards[next_card_id] = card
    next_card_id += 1
    return jsonify(card), 201


@bp.route('/boards/<int:board_id>/cards/<int:card_id>', methods=['PUT'])
def update_card(board_id, card_id):
    card = cards.get(card_id)
    if not card or card['board_id'] != board_id:
        return jsonify({'error': 'Card not found'}), 404

    data = request.get_json() or {}
    if 'column' in data and data['column'] not in VALID_COLUMNS:
        return jsonify({'error': 'Invalid column'}), 400

    card.update({k: v for k, v in data.items() if k in ('title', 'description', 'column')})
    return jsonify(card)


@bp.route('/boards/<int:board_id>/cards/<int:card_id>', methods=['DELETE'])
def delete_card(board_id, card_id):
    card = cards.get(card_id)
    if not card or card['board_id'] != board_id:
        return jsonify({'error': 'Card not found'}), 404
    del cards[card_id]
    return jsonify({'message': 'Card deleted'})


@bp.route('/boards/<int:board_id>/share', methods=['GET'])
def share_board(board_id):
    # Simple HTML preview page for sharing a board
    board = boards.get(board_id)
    if not board:
        return '<h1>Board not found</h1>', 404
    name = request.args.get('name', 'Someone')
    count = len([c for c in cards.values() if c['board_id'] == board_id])
    return f"<html><body><h1>{name} shared a board with you!</h1><p>{board['name']} ({count} cards)</p></body></html>"
