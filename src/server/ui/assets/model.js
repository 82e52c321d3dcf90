// A run as the page shows it: the fold of its events, as the server folds them (src/run/state.rs),
// plus what the server's RunResult leaves out: every attempt with its times and tool calls, the
// steps a replan removed, and what each revision changed.

const TERMINAL = { RunCompleted: 'completed', RunFailed: 'failed', RunCancelled: 'cancelled' };

function emptyUsage() {
  return { llm_calls: 0, input_tokens: 0, output_tokens: 0, tool_calls: 0 };
}

function addUsage(into, u) {
  if (!u) return;
  into.llm_calls += u.llm_calls || 0;
  into.input_tokens += u.input_tokens || 0;
  into.output_tokens += u.output_tokens || 0;
}

function sameSpec(a, b) {
  return (
    a.description === b.description &&
    (a.expected_outcome || '') === (b.expected_outcome || '') &&
    (a.tool || null) === (b.tool || null) &&
    JSON.stringify(a.depends_on || []) === JSON.stringify(b.depends_on || [])
  );
}

/** One step of one revision: its spec, state and attempts. */
class StepRecord {
  constructor(spec, revision) {
    this.id = spec.id;
    this.spec = { ...spec, depends_on: spec.depends_on || [] };
    this.revision = revision;
    this.status = 'pending';
    this.attempts = [];
    this.skipReason = null;
    this.removedIn = null;
    this.usage = emptyUsage();
  }
  get lastAttempt() {
    return this.attempts[this.attempts.length - 1];
  }
}

/** The fold of a run's events. */
export class RunModel {
  constructor(id) {
    this.id = id;
    this.task = '';
    this.options = null;
    this.status = 'planning';
    this.goal = '';
    this.plan = []; // current StepRecords, in plan order
    this.records = []; // every StepRecord ever, for the timeline
    this.revisions = []; // {revision, reason, at, steps, change}
    this.considered = []; // replanner answers that kept the plan
    this.usage = emptyUsage();
    this.finalOutput = null;
    this.error = null;
    this.createdAt = null;
    this.finishedAt = null;
    this.lastSeq = 0;
    this.lastAt = null;
    // Tool calls waiting for a person, by approval id, in the order they came.
    this.pendingCalls = new Map();
  }

  get terminal() {
    return ['completed', 'failed', 'cancelled'].includes(this.status);
  }

  step(id) {
    return this.plan.find((r) => r.id === id);
  }

  // Replaces the plan by `specs`; steps whose id is kept carry over when `carry` says so.
  setPlan(specs, revision, carry) {
    const old = new Map(this.plan.map((r) => [r.id, r]));
    const next = [];
    for (const spec of specs) {
      const prev = old.get(spec.id);
      if (prev && carry(prev)) {
        prev.spec = { ...spec, depends_on: spec.depends_on || [] };
        next.push(prev);
        old.delete(spec.id);
      } else {
        const rec = new StepRecord(spec, revision);
        this.records.push(rec);
        next.push(rec);
      }
    }
    return { next, left: [...old.values()] };
  }

  /** Applies one RunEvent (in seq order). */
  apply(e) {
    if (e.seq <= this.lastSeq) return;
    this.lastSeq = e.seq;
    this.lastAt = e.at;
    const rec = e.step !== undefined ? this.step(e.step) : null;
    const attempt = rec ? rec.attempts.find((a) => a.n === e.attempt) : null;
    switch (e.type) {
      case 'RunSubmitted':
        this.task = e.task;
        this.options = e.options;
        this.createdAt = e.at;
        break;
      case 'PlanStreamed':
        for (const spec of e.steps) {
          const r = new StepRecord(spec, 1);
          this.records.push(r);
          this.plan.push(r);
        }
        break;
      case 'PlanProposed': {
        this.goal = e.plan.goal || '';
        // Streamed steps the final plan keeps carry on; a left-out one survives only if completed.
        const { next, left } = this.setPlan(e.plan.steps, 1, () => true);
        const done = left.filter((r) => r.status === 'completed');
        for (const r of left) if (r.status !== 'completed') r.removedIn = 1;
        this.plan = [...done, ...next];
        this.revisions.push({ revision: 1, reason: null, at: e.at, steps: e.plan.steps, change: null, proposed: e.plan.steps });
        addUsage(this.usage, e.usage);
        this.status = this.options?.policy?.require_approval ? 'awaiting_approval' : 'running';
        break;
      }
      case 'PlanApproved':
        if (e.edited) {
          const before = this.plan.map((r) => r.spec);
          const { next, left } = this.setPlan(e.edited.steps, 1, () => true);
          for (const r of left) r.removedIn = 1;
          this.plan = next;
          this.goal = e.edited.goal || this.goal;
          const rev = this.revisions[this.revisions.length - 1];
          if (rev) {
            rev.reason = 'edited on approval';
            rev.steps = e.edited.steps;
            rev.change = diff(before, e.edited.steps, new Set());
          }
        }
        this.status = 'running';
        break;
      case 'StepStarted':
        if (!rec) break;
        rec.status = 'running';
        rec.attempts.push({ n: e.attempt, start: e.at, end: null, status: 'running', output: null, error: null, usage: null, tools: [] });
        break;
      case 'ToolCalled':
        if (!attempt) break;
        attempt.tools.push({ callId: e.call_id, tool: e.tool, arguments: e.arguments, start: e.at, end: null, ok: null, output: null });
        this.usage.tool_calls += 1;
        break;
      case 'ToolReturned': {
        const call = attempt?.tools.find((t) => t.callId === e.call_id && t.end === null);
        if (!call) break;
        call.end = e.at;
        call.ok = e.ok;
        call.output = e.output;
        break;
      }
      case 'StepCompleted':
        if (!rec) break;
        rec.status = 'completed';
        if (attempt) Object.assign(attempt, { end: e.at, status: 'completed', output: e.output, usage: e.usage });
        addUsage(rec.usage, e.usage);
        addUsage(this.usage, e.usage);
        break;
      case 'StepFailed':
        if (!rec) break;
        rec.status = 'failed';
        if (attempt) {
          const cancelled = e.error?.kind === 'cancelled';
          Object.assign(attempt, { end: e.at, status: cancelled ? 'cancelled' : 'failed', error: e.error, usage: e.usage });
        }
        addUsage(rec.usage, e.usage);
        addUsage(this.usage, e.usage);
        break;
      case 'StepSkipped':
        if (!rec) break;
        rec.status = 'skipped';
        rec.skipReason = e.reason;
        break;
      case 'ReplanConsidered':
        this.considered.push({ at: e.at, reason: e.reason, afterRevision: this.revisions.length });
        addUsage(this.usage, e.usage);
        break;
      case 'Replanned': {
        const before = this.plan.map((r) => r.spec);
        const completed = new Set(this.plan.filter((r) => r.status === 'completed').map((r) => r.id));
        const kept = this.plan.filter((r) => r.status === 'completed');
        for (const r of this.plan) if (r.status !== 'completed') r.removedIn = e.revision;
        const fresh = e.steps.map((spec) => {
          const r = new StepRecord(spec, e.revision);
          this.records.push(r);
          return r;
        });
        this.plan = [...kept, ...fresh];
        this.revisions.push({
          revision: e.revision,
          reason: e.reason,
          at: e.at,
          steps: e.steps,
          causedBy: e.caused_by || null,
          change: diff(before, e.steps, completed),
        });
        addUsage(this.usage, e.usage);
        break;
      }
      case 'ToolApprovalRequested':
        for (const c of e.calls) this.pendingCalls.set(c.approval_id, { ...c, step: e.step, at: e.at });
        break;
      case 'ToolApprovalResolved':
        this.pendingCalls.delete(e.approval_id);
        break;
      default:
        if (TERMINAL[e.type]) {
          this.pendingCalls.clear();
          this.status = TERMINAL[e.type];
          this.finishedAt = e.at;
          if (e.type === 'RunCompleted') this.finalOutput = e.final_output;
          else this.error = e.error || e.reason;
          if (e.usage) addUsage(this.usage, e.usage);
          // Attempts still open when the run ended stop there on the timeline.
          for (const r of this.records) for (const a of r.attempts) if (!a.end) Object.assign(a, { end: e.at, status: 'cancelled' });
        }
    }
  }
}

/**
 * What a revision changed: the plan before (specs) against the new steps, given the ids of the
 * completed steps, which a replan keeps as they are.
 * `kept`: completed steps carried over, and steps re-planned identically; `changed`: same id,
 * different spec; `added`: new ids; `removed`: unfinished steps the new plan leaves out.
 */
export function diff(before, after, completed) {
  const prev = new Map(before.map((s) => [s.id, s]));
  const change = { kept: [...completed], added: [], removed: [], changed: [] };
  const seen = new Set();
  for (const s of after) {
    seen.add(s.id);
    const p = prev.get(s.id);
    if (!p) change.added.push(s.id);
    else if (sameSpec(p, s)) change.kept.push(s.id);
    else change.changed.push(s.id);
  }
  for (const s of before) if (!seen.has(s.id) && !completed.has(s.id)) change.removed.push(s.id);
  return change;
}
