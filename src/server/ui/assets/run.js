// One run, live: its header and controls, the plan as a DAG, the revisions and what each
// changed, the timeline of attempts, the selected step's detail and the final output. Follows
// the run's event stream from its first event to its last; nothing here needs a reload.

import { api, followEvents } from './api.js';
import { renderDag } from './dag.js';
import { h, mount } from './dom.js';
import { planEditor } from './editor.js';
import { count, duration, span, statusLabel, tokens, when } from './format.js';
import { renderGantt } from './gantt.js';
import { markdown } from './markdown.js';
import { RunModel } from './model.js';

const LEGEND = ['pending', 'running', 'completed', 'failed', 'skipped'];

function pre(text, cls) {
  return h('pre', { class: cls || null, text: typeof text === 'string' ? text : JSON.stringify(text, null, 2) });
}

function usageLine(u) {
  if (!u) return '';
  return `${count(tokens(u))} tokens (${u.input_tokens} in, ${u.output_tokens} out), ${u.llm_calls} model call${u.llm_calls === 1 ? '' : 's'}`;
}

/** The run view of `runId`; returns a function that stops following it. */
export function runView(main, runId, { config, onError }) {
  const model = new RunModel(runId);
  let selected = null;
  let editing = false;
  let streamState = 'connecting';
  let frame = 0;

  const header = h('section', { class: 'card run-head' });
  const approval = h('section', { class: 'card approval', id: 'approval', hidden: true });
  const toolApprovals = h('div', { id: 'tool-approvals' });
  const editorSlot = h('div');
  const dagBox = h('div', { class: 'dag-box', id: 'dag' });
  const detail = h('aside', { class: 'card detail', id: 'detail' });
  const revisions = h('section', { class: 'card', id: 'revisions' });
  const gantt = h('div', { class: 'gantt-box', id: 'timeline' });
  const output = h('section', { class: 'card', id: 'result', hidden: true });
  const notice = h('p', { class: 'error', role: 'alert', id: 'notice', hidden: true });

  mount(
    main,
    header,
    notice,
    approval,
    toolApprovals,
    editorSlot,
    h('div', { class: 'split' }, [
      h('section', { class: 'card plan' }, [
        h('div', { class: 'section-head' }, [
          h('h2', { text: 'Plan' }),
          h('span', { class: 'legend' }, LEGEND.map((st) => h('span', { class: `key st-${st}`, text: st }))),
        ]),
        dagBox,
      ]),
      detail,
    ]),
    output,
    h('section', { class: 'card' }, [h('h2', { text: 'Timeline' }), gantt]),
    revisions,
  );

  function showNotice(message) {
    notice.textContent = message;
    notice.hidden = !message;
  }

  async function control(action, body) {
    showNotice('');
    try {
      await api('POST', `/v1/runs/${encodeURIComponent(runId)}/${action}`, body);
    } catch (e) {
      showNotice(`${action}: ${e.message}`);
      throw e;
    }
  }

  function renderHeader() {
    const steps = model.plan;
    const done = steps.filter((r) => r.status === 'completed').length;
    const failed = steps.filter((r) => r.status === 'failed').length;
    const trace = config.trace_url_template && /^https?:\/\//.test(config.trace_url_template)
      ? h('a', { id: 'trace-link', href: traceUrl(config.trace_url_template, runId), target: '_blank', rel: 'noopener noreferrer', text: 'Trace ↗' })
      : null;
    const cancel = model.terminal
      ? null
      : h('button', { id: 'cancel', class: 'danger', type: 'button', text: 'Cancel run', onclick: () => confirm('Cancel this run?') && control('cancel', { reason: 'cancelled from the web page' }).catch(() => {}) });
    mount(
      header,
      h('div', { class: 'head-row' }, [
        h('span', { class: `badge big st-${model.status}`, id: 'run-status', text: statusLabel(model.status) }),
        h('h1', { class: 'task', title: model.task, text: model.task || '…' }),
        h('span', { class: 'spacer' }),
        trace,
        cancel,
      ]),
      h('dl', { class: 'facts' }, [
        ['run', runId],
        ['created', when(model.createdAt)],
        ['duration', duration(span(model.createdAt, model.finishedAt || (model.terminal ? model.lastAt : null)))],
        ['steps', `${done}/${steps.length} completed${failed ? `, ${failed} failed` : ''}`],
        ['revision', String(model.revisions.length || '–')],
        ['usage', `${usageLine(model.usage)}, ${model.usage.tool_calls} tool call${model.usage.tool_calls === 1 ? '' : 's'}`],
        ['events', `${model.lastSeq} · ${streamState}`],
      ].map(([k, v]) => h('div', {}, [h('dt', { text: k }), h('dd', { text: v })]))),
      model.goal ? h('p', { class: 'goal' }, [h('strong', { text: 'Goal: ' }), model.goal]) : null,
    );
  }

  // Drawn when it appears only, so a reason being typed survives the live refreshes.
  function renderApproval() {
    const waiting = model.status === 'awaiting_approval';
    if (!waiting && editing) {
      editing = false;
      mount(editorSlot);
    }
    const show = waiting && !editing;
    if (show === !approval.hidden) return;
    approval.hidden = !show;
    if (!show) return;
    const reason = h('input', { id: 'reject-reason', placeholder: 'Reason (optional)' });
    mount(
      approval,
      h('div', { class: 'head-row' }, [
        h('div', {}, [h('h2', { text: 'This plan waits for your approval' }), h('p', { class: 'muted', text: 'No step runs until you approve it, as it is or edited.' })]),
        h('span', { class: 'spacer' }),
        h('button', { id: 'approve', class: 'primary', type: 'button', text: 'Approve', onclick: () => control('approve', {}).catch(() => {}) }),
        h('button', { id: 'edit', type: 'button', text: 'Edit…', onclick: startEditing }),
        reason,
        h('button', { id: 'reject', class: 'danger', type: 'button', text: 'Reject', onclick: () => control('reject', reason.value.trim() ? { reason: reason.value.trim() } : {}).catch(() => {}) }),
      ]),
    );
  }

  // One card per tool call waiting for a person. Drawn when the set of calls changes only, so a
  // reason being typed survives the live refreshes.
  let drawnCalls = '';
  function renderToolApprovals() {
    const calls = [...model.pendingCalls.values()];
    const ids = calls.map((c) => c.approval_id).join(',');
    if (ids === drawnCalls) return;
    drawnCalls = ids;
    mount(toolApprovals, ...calls.map(toolApprovalCard));
  }

  function toolApprovalCard(c) {
    const path = `approvals/${encodeURIComponent(c.approval_id)}`;
    const reason = h('input', { class: 'tool-reject-reason', placeholder: 'Reason (the model sees it)' });
    const answer = (body) => control(path, body).catch(() => {});
    return h('section', { class: 'card approval tool-approval', 'data-approval-id': c.approval_id }, [
      h('div', { class: 'head-row' }, [
        h('div', {}, [
          h('h2', { text: `Step ${c.step} wants to call ${c.tool}` }),
          h('p', { class: 'muted', text: 'The step waits for your answer; the rest of the run goes on.' }),
        ]),
        h('span', { class: 'spacer' }),
        h('button', { class: 'primary approve-call', type: 'button', text: 'Approve', onclick: () => answer({ decision: 'approve' }) }),
        reason,
        h('button', { class: 'danger reject-call', type: 'button', text: 'Reject', onclick: () => answer({ decision: 'reject', reason: reason.value.trim() || 'rejected on the web page' }) }),
      ]),
      pre(c.arguments),
    ]);
  }

  function startEditing() {
    editing = true;
    const plan = { goal: model.goal, steps: model.plan.map((r) => r.spec) };
    mount(
      editorSlot,
      planEditor(plan, {
        onApprove: (edited) => control('approve', { plan: edited }),
        onClose: () => {
          editing = false;
          mount(editorSlot);
          schedule();
        },
      }),
    );
    schedule();
  }

  function select(id) {
    selected = id;
    schedule();
  }

  function renderDetail() {
    const rec = selected && model.step(selected);
    if (!rec) {
      mount(detail, h('h2', { text: 'Step' }), h('p', { class: 'muted', text: 'Select a step in the plan or the timeline to see its attempts, tool calls and output.' }));
      return;
    }
    const spec = rec.spec;
    mount(
      detail,
      h('div', { class: 'section-head' }, [h('h2', { text: `Step ${rec.id}` }), h('span', { class: `badge st-${rec.status}`, text: rec.status })]),
      h('p', { text: spec.description }),
      h('dl', { class: 'facts small' }, [
        ['expected', spec.expected_outcome || '–'],
        ['tool', spec.tool || 'any'],
        ['depends on', spec.depends_on.join(', ') || 'nothing'],
        ['revision', String(rec.revision)],
        ['usage', usageLine(rec.usage) || '–'],
      ].map(([k, v]) => h('div', {}, [h('dt', { text: k }), h('dd', { text: v })]))),
      rec.skipReason ? h('p', { class: 'muted', text: `Skipped: ${rec.skipReason}` }) : null,
      rec.attempts.length ? null : h('p', { class: 'muted', text: 'Not started yet.' }),
      rec.attempts.map((a) =>
        h('details', { class: `attempt-detail at-${a.status}`, open: a === rec.lastAttempt ? true : null }, [
          h('summary', {}, [
            h('strong', { text: `Attempt ${a.n}` }),
            ` · ${a.status} · ${duration(span(a.start, a.end))}`,
            a.usage ? ` · ${count(tokens(a.usage))} tokens` : '',
          ]),
          a.tools.map((t) =>
            h('div', { class: `tool-call${t.ok === false ? ' bad' : ''}` }, [
              h('div', { class: 'tool-name' }, [h('code', { text: t.tool }), ` ${t.ok === null ? 'running…' : t.ok ? 'ok' : 'failed'} · ${duration(span(t.start, t.end))}`]),
              h('div', { class: 'label', text: 'arguments' }),
              pre(t.arguments),
              t.output !== null ? h('div', { class: 'label', text: 'observation' }) : null,
              t.output !== null ? pre(t.output) : null,
            ]),
          ),
          a.output !== null ? h('div', { class: 'label', text: 'output' }) : null,
          a.output !== null ? pre(a.output, 'output') : null,
          a.error ? h('div', { class: 'label', text: 'error' }) : null,
          a.error ? pre(`${a.error.kind}: ${a.error.message}`, 'err') : null,
        ]),
      ),
    );
  }

  function renderRevisions() {
    const items = model.revisions.map((rev) => {
      const c = rev.change;
      const group = (label, ids, cls) => (ids?.length ? h('div', { class: `change ${cls}`, dataset: { kind: cls } }, [h('span', { class: 'label', text: label }), ...ids.map((id) => h('code', { text: id }))]) : null);
      const considered = model.considered.filter((k) => k.afterRevision === rev.revision);
      return h('article', { class: 'revision', dataset: { revision: rev.revision } }, [
        h('h3', {}, [`Revision ${rev.revision}`, h('span', { class: 'muted', text: ` · ${when(rev.at)}` })]),
        h('p', { class: 'reason', text: rev.reason ? `${rev.revision > 1 ? 'Replanner' : 'Approver'}: ${rev.reason}` : 'Proposed by the planner.' }),
        rev.causedBy ? h('p', { class: 'muted', text: `After step ${rev.causedBy} failed.` }) : null,
        c ? h('div', { class: 'changes' }, [group('removed', c.removed, 'removed'), group('added', c.added, 'added'), group('changed', c.changed, 'changed'), group('kept', c.kept, 'kept')]) : null,
        h('ol', { class: 'rev-steps' }, rev.steps.map((st) => h('li', {}, [h('code', { text: st.id }), ` ${st.description}`, st.depends_on?.length ? h('span', { class: 'muted', text: ` ← ${st.depends_on.join(', ')}` }) : null]))),
        considered.map((k) => h('p', { class: 'muted', text: `Replanner kept this plan: ${k.reason}` })),
      ]);
    });
    mount(revisions, h('h2', { text: `Plan revisions (${model.revisions.length})` }), items.length ? items : h('p', { class: 'muted', text: 'No plan yet.' }));
  }

  function renderOutput() {
    if (model.finalOutput !== null) {
      output.hidden = false;
      mount(output, h('h2', { text: 'Final output' }), h('div', { class: 'markdown', id: 'output' }, [markdown(model.finalOutput)]));
    } else if (model.error) {
      output.hidden = false;
      mount(output, h('h2', { text: model.status === 'cancelled' ? 'Cancelled' : 'Failed' }), pre(model.error, 'err'));
    } else output.hidden = true;
  }

  function render() {
    frame = 0;
    renderHeader();
    renderApproval();
    renderToolApprovals();
    const nodes = model.plan.map((r) => ({ id: r.id, description: r.spec.description, tool: r.spec.tool, depends_on: r.spec.depends_on, status: r.status, attempts: r.attempts.length }));
    mount(dagBox, nodes.length ? renderDag(nodes, { selected, onSelect: select }) : h('p', { class: 'muted', text: model.status === 'planning' ? 'The planner is writing the plan…' : 'No plan.' }));
    renderDetail();
    renderRevisions();
    mount(gantt, model.records.some((r) => r.attempts.length) ? renderGantt(model, Math.max(gantt.clientWidth, 480), { selected, onSelect: select }) : h('p', { class: 'muted', text: 'No step has started yet.' }));
    renderOutput();
  }

  // Many events arrive in a burst (history); draw once per frame.
  function schedule() {
    if (!frame) frame = requestAnimationFrame(render);
  }

  const stop = followEvents(
    runId,
    (e) => {
      model.apply(e);
      schedule();
    },
    (state, err) => {
      streamState = state;
      if (err) onError(err);
      schedule();
    },
  );
  // Running bars and the duration grow with the clock.
  const tick = setInterval(() => !model.terminal && model.createdAt && schedule(), 1000);
  render();
  return () => {
    stop();
    clearInterval(tick);
    if (frame) cancelAnimationFrame(frame);
  };
}

/** The run's trace link: its trace id is its run id's hex digits (stepwise's id generator). */
function traceUrl(template, runId) {
  const traceId = runId.replaceAll('-', '').toLowerCase();
  return template.replaceAll('{trace_id}', encodeURIComponent(traceId)).replaceAll('{run_id}', encodeURIComponent(runId));
}
