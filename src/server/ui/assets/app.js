// The page's entry: asks for a token when the server wants one, then routes between the runs
// list (#/), the new-run form (#/new) and one run (#/runs/{id}).

import { api, clearToken, setToken, token, whenUnauthorized } from './api.js';
import { h, mount } from './dom.js';
import { newRunView, runsView } from './runs.js';
import { runView } from './run.js';

const main = document.getElementById('main');
const signOut = document.getElementById('sign-out');
let leave = () => {};
let config = { trace_url_template: null };

function showError(e) {
  if (e?.status === 401) return; // the token form takes over
  const p = main.querySelector('#page-error') || main.insertBefore(h('p', { id: 'page-error', class: 'error', role: 'alert' }), main.firstChild);
  p.textContent = e.message;
}

/** The token form; `message` says why it is shown again (a refused token). */
function askToken(message) {
  leave();
  leave = () => {};
  window.onhashchange = null;
  signOut.hidden = true;
  const input = h('input', { type: 'password', id: 'token', autocomplete: 'off', required: true, 'aria-label': 'API token' });
  mount(
    main,
    h(
      'form',
      {
        class: 'card auth',
        id: 'auth-form',
        onsubmit: (ev) => {
          ev.preventDefault();
          setToken(input.value.trim());
          start();
        },
      },
      [
        h('h1', { text: 'This server needs an API token' }),
        h('p', { class: 'muted', text: 'Paste one of the tokens of STEPWISE_API_TOKENS. It is kept for this tab only and sent with every request.' }),
        message ? h('p', { class: 'error', id: 'auth-error', role: 'alert', text: message }) : null,
        h('div', { class: 'actions' }, [input, h('button', { class: 'primary', type: 'submit', text: 'Continue' })]),
      ],
    ),
  );
  input.focus();
}

whenUnauthorized(() => {
  const had = token();
  clearToken();
  askToken(had ? 'The server refused this token (401 unauthorized). Check it against STEPWISE_API_TOKENS and try again.' : null);
});

function route() {
  leave();
  leave = () => {};
  const hash = location.hash.replace(/^#/, '') || '/';
  const m = /^\/runs\/([^/?]+)/.exec(hash);
  if (m) {
    leave = runView(main, decodeURIComponent(m[1]), { config, onError: showError });
  } else if (hash.startsWith('/new')) {
    newRunView(main, { onSubmitted: (id) => (location.hash = `#/runs/${encodeURIComponent(id)}`) });
  } else {
    leave = runsView(main, { onError: showError });
  }
}

/** Checks the token (or that none is needed) before anything about runs is shown. */
async function start() {
  try {
    await api('GET', '/v1/runs?limit=1');
    config = await api('GET', '/ui/config.json');
  } catch (e) {
    if (e.status !== 401) mount(main, h('p', { class: 'error', role: 'alert', text: `The server did not answer: ${e.message}` }));
    return; // a 401 has shown the token form
  }
  signOut.hidden = !token();
  window.onhashchange = route;
  route();
}

signOut.addEventListener('click', () => {
  clearToken();
  askToken(null);
});
start();
