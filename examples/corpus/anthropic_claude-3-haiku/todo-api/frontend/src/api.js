import axios from 'axios';

const api = axios.create({
  baseURL: '/todos',
  withCredentials: true,
});

export const getTodos = () => api.get('').then((res) => res.data);
export const createTodo = (todo) => api.post('', todo).then((res) => res.data);
export const updateTodo = (id, updates) => api.put(`/${id}`, updates).then((res) => res.data);
export const deleteTodo = (id) => api.delete(`/${id}`);
