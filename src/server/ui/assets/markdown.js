// A small Markdown renderer for model output that builds DOM nodes, never HTML strings: raw HTML
// in the text stays text, images are not loaded (they become links), and only http(s) and mailto
// links are made clickable. Supports headings, paragraphs, emphasis, inline and fenced code,
// lists, block quotes, rules and pipe tables; anything else is shown as written.

import { h } from './dom.js';

const SAFE_URL = /^(https?:\/\/|mailto:)/i;

// Inline patterns, tried at each position; the earliest match wins, ties go to the first listed.
const INLINE = [
  { re: /`([^`]+)`/y, make: (m) => h('code', { text: m[1] }) },
  { re: /!\[([^\]]*)\]\(([^)\s]*)\)/y, make: (m) => link(m[2], `image: ${m[1] || m[2]}`) },
  { re: /\[([^\]]+)\]\(([^)\s]*)\)/y, make: (m) => link(m[2], null, m[1]) },
  { re: /\*\*(?=\S)([\s\S]*?\S)\*\*/y, make: (m) => h('strong', {}, inline(m[1])) },
  { re: /__(?=\S)([\s\S]*?\S)__/y, make: (m) => h('strong', {}, inline(m[1])) },
  { re: /\*(?=\S)([^*]*?\S)\*/y, make: (m) => h('em', {}, inline(m[1])) },
  { re: /(?<![\w])_(?=\S)([^_]*?\S)_(?![\w])/y, make: (m) => h('em', {}, inline(m[1])) },
  { re: /~~(?=\S)([\s\S]*?\S)~~/y, make: (m) => h('del', {}, inline(m[1])) },
];

// A link only when its target is safe; otherwise its text, and the target shown beside it.
function link(url, label, inner) {
  if (!SAFE_URL.test(url)) return document.createTextNode(label ?? `${inner} (${url})`);
  const a = h('a', { href: url, rel: 'noopener noreferrer nofollow', target: '_blank' });
  if (inner !== undefined && inner !== null) a.append(...inline(inner));
  else a.textContent = label;
  return a;
}

/** Inline Markdown of `text` as a list of nodes. */
export function inline(text) {
  const out = [];
  let plain = '';
  let i = 0;
  while (i < text.length) {
    let made = null;
    const c = text[i];
    if ('`![*_~'.includes(c)) {
      for (const p of INLINE) {
        p.re.lastIndex = i;
        const m = p.re.exec(text);
        if (m) {
          made = { node: p.make(m), len: m[0].length };
          break;
        }
      }
    }
    if (made) {
      if (plain) out.push(document.createTextNode(plain));
      plain = '';
      out.push(made.node);
      i += made.len;
    } else if (c === '\\' && i + 1 < text.length && /[\\`*_[\]()#+\-.!~|>]/.test(text[i + 1])) {
      plain += text[i + 1];
      i += 2;
    } else {
      plain += c;
      i += 1;
    }
  }
  if (plain) out.push(document.createTextNode(plain));
  return out;
}

const FENCE = /^\s*(```|~~~)\s*([\w+-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^(\s*)([-*+])\s+(.*)$/;
const ORDERED = /^(\s*)(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

function cells(line) {
  return line.trim().replace(/^\|/, '').replace(/\|$/, '').split('|').map((c) => c.trim());
}

function isBlockStart(line, next) {
  return (
    FENCE.test(line) || HEADING.test(line) || RULE.test(line) || BULLET.test(line) ||
    ORDERED.test(line) || QUOTE.test(line) || (line.includes('|') && next !== undefined && TABLE_SEP.test(next))
  );
}

/** Block-level Markdown of `text` as a DocumentFragment. */
export function markdown(text) {
  const frag = document.createDocumentFragment();
  const lines = String(text ?? '').replace(/\r\n?/g, '\n').split('\n');
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    let m;
    if ((m = FENCE.exec(line))) {
      const body = [];
      i += 1;
      while (i < lines.length && !(lines[i].trim().startsWith(m[1]) && FENCE.test(lines[i]))) body.push(lines[i++]);
      i += 1;
      frag.append(h('pre', {}, [h('code', { class: m[2] ? `lang-${m[2]}` : null, text: body.join('\n') })]));
    } else if ((m = HEADING.exec(line))) {
      frag.append(h(`h${m[1].length}`, {}, inline(m[2])));
      i += 1;
    } else if (RULE.test(line)) {
      frag.append(h('hr'));
      i += 1;
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        body.push(m[1]);
        i += 1;
      }
      frag.append(h('blockquote', {}, [markdown(body.join('\n'))]));
    } else if (BULLET.test(line) || ORDERED.test(line)) {
      const ordered = !BULLET.test(line);
      const re = ordered ? ORDERED : BULLET;
      const list = h(ordered ? 'ol' : 'ul');
      if (ordered) {
        const start = Number(ORDERED.exec(line)[2]);
        if (start !== 1) list.setAttribute('start', String(start));
      }
      const items = [];
      while (i < lines.length && lines[i].trim()) {
        if ((m = re.exec(lines[i]))) items.push([m[3]]);
        else if (items.length && /^\s+/.test(lines[i])) items[items.length - 1].push(lines[i].trim());
        else break;
        i += 1;
      }
      list.append(...items.map((t) => h('li', {}, inline(t.join(' ')))));
      frag.append(list);
    } else if (line.includes('|') && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1])) {
      const head = cells(line);
      i += 2;
      const rows = [];
      while (i < lines.length && lines[i].includes('|') && lines[i].trim()) rows.push(cells(lines[i++]));
      frag.append(
        h('table', {}, [
          h('thead', {}, [h('tr', {}, head.map((c) => h('th', {}, inline(c))))]),
          h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, inline(c)))))),
        ]),
      );
    } else {
      const para = [line.trim()];
      i += 1;
      while (i < lines.length && lines[i].trim() && !isBlockStart(lines[i], lines[i + 1])) para.push(lines[i++].trim());
      frag.append(h('p', {}, inline(para.join('\n'))));
    }
  }
  return frag;
}
