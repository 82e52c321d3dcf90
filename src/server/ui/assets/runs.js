// The runs list (newest first, refreshed every two seconds, filtered by status and task text)
// and the form that submits a new run.

import { api } from './api.js';
import { h, mount } from './dom.js';
import { clip, count, duration, span, statusLabel, tokens, when } from './format.js';

const STATUSES = ['planning', 'awaiting_approval', 'running', 'completed', 'failed', 'cancelled'];
const REFRESH_MS = 2000;
const PAGE = 200;

// Each run's full result, fetched again only when its last event changed: the list's summaries
// carry no step counts or usage.
const details = new Map(); // id → {lastSeq, result}

async function refreshDetails(runs) {
  const stale = runs.filter((r) => details.get(r.id)?.lastSeq !== r.last_seq).slice(0, 25);
  await Promise.all(
    stale.map(async (r) => {
      try {
        details.set(r.id, { lastSeq: r.last_seq, result: await api('GET', `/v1/runs/${encodeURIComponent(r.id)}`) });
      } catch {
        // Shown without details; tried again on the next refresh.
      }
    }),
  );
}

function stepCounts(result) {
  const steps = result?.plan?.steps || [];
  const by = (s) => steps.filter((x) => x.status === s).length;
  return { total: steps.length, completed: by('completed'), failed: by('failed'), running: by('running') };
}

/** The runs list view; returns a function that stops its refreshing. */
export function runsView(main, { onError }) {
  let filter = new URLSearchParams(location.hash.split('?')[1] || '');
  let status = filter.get('status') || '';
  let text = filter.get('q') || '';
  let runs = [];
  let timer = null;
  let stopped = false;

  const chips = h('div', { class: 'chips', role: 'group', 'aria-label': 'filter by status' });
  const search = h('input', {
    type: 'search',
    id: 'filter-text',
    placeholder: 'Filter by task…',
    value: text,
    oninput: () => {
      text = search.value;
      render();
    },
  });
  const tbody = h('tbody');
  const empty = h('p', { class: 'muted empty', hidden: true });
  mount(
    main,
    h('section', { class: 'card' }, [
      h('div', { class: 'list-head' }, [h('h1', { text: 'Runs' }), h('span', { class: 'spacer' }), search, h('a', { class: 'button primary', href: '#/new', text: 'New run' })]),
      chips,
      h('table', { class: 'runs' }, [
        h('thead', {}, [h('tr', {}, ['status', 'task', 'steps', 'duration', 'tokens', 'created'].map((t) => h('th', { text: t })))]),
        tbody,
      ]),
      empty,
    ]),
  );

  function chip(value, label, n) {
    return h('button', {
      type: 'button',
      class: `chip${status === value ? ' on' : ''}${value ? ` st-${value}` : ''}`,
      dataset: { status: value || 'all' },
      onclick: () => {
        status = value;
        render();
      },
      text: `${label} ${n}`,
    });
  }

  function render() {
    const counts = Object.fromEntries(STATUSES.map((st) => [st, runs.filter((r) => r.status === st).length]));
    mount(chips, chip('', 'all', runs.length), STATUSES.filter((st) => counts[st]).map((st) => chip(st, statusLabel(st), counts[st])));
    const needle = text.trim().toLowerCase();
    const shown = runs.filter((r) => (!status || r.status === status) && (!needle || r.task.toLowerCase().includes(needle)));
    mount(
      tbody,
      shown.map((r) => {
        const d = details.get(r.id)?.result;
        const c = stepCounts(d);
        const href = `#/runs/${encodeURIComponent(r.id)}`;
        const steps = d ? `${c.completed}/${c.total}${c.failed ? ` · ${c.failed} failed` : ''}${c.running ? ` · ${c.running} running` : ''}` : '…';
        return h('tr', { class: 'run-row', dataset: { run: r.id, status: r.status } }, [
          h('td', {}, [h('span', { class: `badge st-${r.status}`, text: statusLabel(r.status) })]),
          h('td', { class: 'task' }, [h('a', { href, title: r.task, text: clip(r.task, 120) })]),
          h('td', { class: 'num', text: steps }),
          h('td', { class: 'num', text: duration(span(r.created_at, r.finished_at)) }),
          h('td', { class: 'num', text: d ? count(tokens(d.usage)) : '…', title: d ? `${d.usage.input_tokens} in, ${d.usage.output_tokens} out, ${d.usage.llm_calls} model calls, ${d.usage.tool_calls} tool calls` : null }),
          h('td', { class: 'num', text: when(r.created_at) }),
        ]);
      }),
    );
    empty.hidden = shown.length > 0;
    empty.textContent = runs.length ? 'No run matches the filter.' : 'No runs yet. Submit one with “New run”.';
  }

  async function refresh() {
    try {
      const page = await api('GET', `/v1/runs?limit=${PAGE}`);
      runs = page.runs;
      render();
      await refreshDetails(runs);
      if (!stopped) render();
    } catch (e) {
      onError(e);
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** The form that submits a run with the main policy switches; `onSubmitted(id)` follows. */
export function newRunView(main, { onSubmitted }) {
  const task = h('textarea', { id: 'task', rows: 4, required: true, placeholder: 'What should the agent do?' });
  const approval = h('input', { type: 'checkbox', id: 'require_approval' });
  const stream = h('input', { type: 'checkbox', id: 'stream_plan' });
  const verify = h('input', { type: 'checkbox', id: 'verify_outcome' });
  const failure = h('select', { id: 'on_step_failure' }, ['replan', 'retry', 'skip', 'abort'].map((v) => h('option', { value: v, text: v })));
  const replan = h('select', { id: 'replan' }, ['on_failure', 'after_each_step', 'never'].map((v) => h('option', { value: v, text: v.replace(/_/g, ' ') })));
  const retries = h('input', { type: 'number', id: 'max_retries', min: 0, max: 20, value: '1' });
  const replans = h('input', { type: 'number', id: 'max_replans', min: 0, max: 20, value: '2' });
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  const submit = h('button', { class: 'primary', type: 'submit', id: 'submit-run', text: 'Submit' });
  stream.addEventListener('change', () => {
    // The server plans unstreamed when a person approves the whole plan; say so up front.
    if (stream.checked) approval.checked = false;
  });
  approval.addEventListener('change', () => {
    if (approval.checked) stream.checked = false;
  });
  const field = (label, input, hint) => h('label', { class: 'field' }, [h('span', { text: label }), input, hint ? h('small', { class: 'muted', text: hint }) : null]);
  const form = h(
    'form',
    {
      class: 'card new-run',
      onsubmit: async (ev) => {
        ev.preventDefault();
        error.hidden = true;
        submit.disabled = true;
        const body = {
          task: task.value,
          require_approval: approval.checked,
          policy: {
            on_step_failure: failure.value,
            max_retries: Number(retries.value),
            max_replans: Number(replans.value),
            replan: replan.value,
            stream_plan: stream.checked,
            verify_outcome: verify.checked,
          },
        };
        try {
          const r = await api('POST', '/v1/runs', body);
          onSubmitted(r.id);
        } catch (e) {
          error.textContent = e.message;
          error.hidden = false;
        } finally {
          submit.disabled = false;
        }
      },
    },
    [
      h('h1', { text: 'New run' }),
      field('Task', task),
      h('div', { class: 'grid' }, [
        h('label', { class: 'check' }, [approval, ' require approval (review, edit or reject the plan first)']),
        h('label', { class: 'check' }, [stream, ' stream the plan (start steps while it is written)']),
        h('label', { class: 'check' }, [verify, ' verify each outcome']),
      ]),
      h('div', { class: 'grid' }, [
        field('On step failure', failure, 'once its retries are used up'),
        field('Max retries', retries),
        field('Replan', replan),
        field('Max replans', replans),
      ]),
      error,
      h('div', { class: 'actions' }, [h('a', { class: 'button link', href: '#/', text: 'Cancel' }), h('span', { class: 'spacer' }), submit]),
    ],
  );
  mount(main, form);
  task.focus();
}
