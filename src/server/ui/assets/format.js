// Small formatting helpers shared by the views.

/** "1.2 s", "3 min 4 s", "2 h 5 min" from milliseconds. */
export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '–';
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const sec = ms / 1000;
  if (sec < 60) return `${sec.toFixed(sec < 10 ? 1 : 0)} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} min ${Math.round(sec % 60)} s`;
  return `${Math.floor(min / 60)} h ${min % 60} min`;
}

/** 12 345 → "12.3k". */
export function count(n) {
  if (!n) return '0';
  if (n < 1000) return String(n);
  if (n < 1e6) return `${(n / 1000).toFixed(n < 10000 ? 1 : 0)}k`;
  return `${(n / 1e6).toFixed(1)}M`;
}

/** Local date and time, short. */
export function when(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  return d.toDateString() === today.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

/** Milliseconds between two ISO times (the second defaults to now). */
export function span(fromIso, toIso) {
  if (!fromIso) return null;
  return (toIso ? Date.parse(toIso) : Date.now()) - Date.parse(fromIso);
}

/** Text clipped to n characters with an ellipsis. */
export function clip(text, n) {
  const t = String(text ?? '');
  return t.length > n ? `${t.slice(0, n - 1)}…` : t;
}

/** Human name of a run or step status. */
export function statusLabel(status) {
  return String(status || '').replace(/_/g, ' ');
}

/** Total tokens of a usage object. */
export function tokens(u) {
  return (u?.input_tokens || 0) + (u?.output_tokens || 0);
}
