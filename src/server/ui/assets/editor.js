// The plan editor of a run awaiting approval: change, add and remove steps and their
// dependencies, then approve the edited plan. The server validates it; its 422 names the step
// ("plan: step s2: dependency cycle s2 → s1 → s2"), and the error is shown on that step's row.

import { h } from './dom.js';

const STEP_IN_ERROR = /(?:^|:\s*)step ([A-Za-z0-9_.-]+):/;
const STEP_BY_INDEX = /step #(\d+)/;

function splitIds(text) {
  return text.split(/[\s,]+/).map((t) => t.trim()).filter(Boolean);
}

/**
 * An editor over `plan` ({goal, steps}); `onApprove(planSpec)` must resolve, or reject with an
 * ApiError whose message the editor places; `onClose()` leaves the editor.
 */
export function planEditor(plan, { onApprove, onClose }) {
  const goal = h('input', { class: 'goal', value: plan.goal || '', 'aria-label': 'goal' });
  const body = h('tbody');
  const general = h('p', { class: 'error', hidden: true, role: 'alert' });

  function row(step) {
    const field = (name, value, attrs = {}) => h('input', { name, value: value ?? '', 'aria-label': name, ...attrs });
    const tr = h('tr', { class: 'edit-step' }, [
      h('td', {}, [field('id', step.id, { size: 8 })]),
      h('td', {}, [
        h('textarea', { name: 'description', rows: 2, 'aria-label': 'description', value: step.description ?? '' }),
        h('div', { class: 'row-error', hidden: true, role: 'alert' }),
      ]),
      h('td', {}, [h('textarea', { name: 'expected_outcome', rows: 2, 'aria-label': 'expected outcome', value: step.expected_outcome ?? '' })]),
      h('td', {}, [field('tool', step.tool, { size: 10, placeholder: 'none' })]),
      h('td', {}, [field('depends_on', (step.depends_on || []).join(', '), { size: 10, placeholder: 'none' })]),
      h('td', {}, [h('button', { class: 'link danger remove', type: 'button', title: 'Remove this step', onclick: () => tr.remove(), text: 'Remove' })]),
    ]);
    return tr;
  }

  function read() {
    const steps = [...body.children].map((tr) => {
      const v = (n) => tr.querySelector(`[name="${n}"]`).value.trim();
      return {
        id: v('id'),
        description: v('description'),
        expected_outcome: v('expected_outcome'),
        tool: v('tool') || null,
        depends_on: splitIds(v('depends_on')),
      };
    });
    return { goal: goal.value.trim(), steps };
  }

  function clearErrors() {
    general.hidden = true;
    for (const tr of body.children) {
      tr.classList.remove('has-error');
      const e = tr.querySelector('.row-error');
      e.hidden = true;
      e.textContent = '';
    }
  }

  // Puts the server's message on the row of the step it names, else above the table.
  function place(message) {
    const rows = [...body.children];
    let target = null;
    const byId = STEP_IN_ERROR.exec(message);
    if (byId) target = rows.find((tr) => tr.querySelector('[name="id"]').value.trim() === byId[1]);
    const byIndex = STEP_BY_INDEX.exec(message);
    if (!target && byIndex) target = rows[Number(byIndex[1]) - 1] || rows[Number(byIndex[1])];
    if (target) {
      target.classList.add('has-error');
      const e = target.querySelector('.row-error');
      e.textContent = message;
      e.hidden = false;
      target.scrollIntoView({ block: 'nearest' });
    } else {
      general.textContent = message;
      general.hidden = false;
    }
  }

  for (const st of plan.steps) body.append(row(st));
  const approve = h('button', {
    class: 'primary',
    id: 'approve-edited',
    type: 'button',
    text: 'Approve edited plan',
    onclick: async () => {
      clearErrors();
      approve.disabled = true;
      try {
        await onApprove(read());
      } catch (e) {
        place(e.message);
      } finally {
        approve.disabled = false;
      }
    },
  });
  const next = () => {
    const ids = new Set([...body.querySelectorAll('[name="id"]')].map((i) => i.value.trim()));
    let n = body.children.length + 1;
    while (ids.has(`s${n}`)) n += 1;
    return `s${n}`;
  };
  return h('section', { class: 'editor card' }, [
    h('h2', { text: 'Edit the plan' }),
    h('p', { class: 'muted', text: 'Dependencies are step ids separated by commas. The server checks the plan (ids, dependencies, cycles, tools) before it runs.' }),
    h('label', { class: 'goal-label' }, ['Goal ', goal]),
    general,
    h('table', { class: 'edit-table' }, [
      h('thead', {}, [h('tr', {}, ['id', 'description', 'expected outcome', 'tool', 'depends on', ''].map((t) => h('th', { text: t })))]),
      body,
    ]),
    h('div', { class: 'actions' }, [
      h('button', { type: 'button', id: 'add-step', text: 'Add step', onclick: () => body.append(row({ id: next(), description: '', depends_on: [] })) }),
      h('span', { class: 'spacer' }),
      h('button', { type: 'button', class: 'link', text: 'Cancel editing', onclick: onClose }),
      approve,
    ]),
  ]);
}
