import Table from 'cli-table3'
import type {GroupStatus} from '../group/GroupStatus.js'
import type {JobInfo} from '../group/JobControl.js'
import type {DamagedGroupReport} from '../store/GroupStore.js'
import {humanAge, humanBytes} from './format.js'
import {colour, stdoutIsLive} from './terminal.js'

/**
 * A table as cli-table3 draws it. Output for a script, a pipe or a log (no colours, no set
 * widths, single-line printable ASCII cells: what `status` prints in a cron job) is drawn here
 * directly, to the character what cli-table3 draws (a property test holds the two equal): cli-table3
 * took 7 to 8 ms to draw the five small tables of a `status` of five groups, an eighth of
 * clonectl's whole start-up over Node's. Anything else (a terminal's colours, wrapping to fit
 * it, other characters) goes to cli-table3.
 */
export function renderTable(head: string[], rows: string[][], colWidths?: number[]): string {
  const plain = colWidths === undefined && !stdoutIsLive() ? drawPlain(head, rows) : undefined
  if (plain !== undefined) return plain
  const t = new Table({head, style: {head: stdoutIsLive() ? ['cyan'] : [], border: stdoutIsLive() ? ['grey'] : []}, ...(colWidths ? {colWidths, wordWrap: true} : {})})
  for (const r of rows) t.push(r)
  return t.toString()
}

const printableAscii = /^[\x20-\x7e]*$/

/** cli-table3's default box, padding 1, every row ruled off; undefined when a cell is not plain. */
export function drawPlain(head: string[], rows: string[][]): string | undefined {
  const all = [head, ...rows]
  if (!all.every((r) => r.length === head.length && r.every((c) => printableAscii.test(c)))) return undefined
  const widths = head.map((_, i) => Math.max(...all.map((r) => r[i]!.length)) + 2)
  const rule = (left: string, mid: string, right: string): string => left + widths.map((n) => '─'.repeat(n)).join(mid) + right
  const line = (r: string[]): string => `│${r.map((c, i) => ` ${c.padEnd(widths[i]! - 2)} `).join('│')}│`
  const body = all.flatMap((r, i) => (i === 0 ? [line(r)] : [rule('├', '┼', '┤'), line(r)]))
  return [rule('┌', '┬', '┐'), ...body, rule('└', '┴', '┘')].join('\n')
}

/** The width to fit: the terminal's, else $COLUMNS, else none (a pipe gets whole lines). */
export function outputColumns(): number | undefined {
  const n = process.stdout.columns || Number(process.env.COLUMNS)
  return Number.isFinite(n) && n > 0 ? n : undefined
}

// eslint-disable-next-line no-control-regex -- ANSI colour sequences take no columns
const visible = (s: string): number => Math.max(0, ...s.replace(/\u001B\[[0-9;]*m/g, '').split('\n').map((l) => [...l].length))

/**
 * Column widths (padding included) that fit `width`, narrowing the `shrinkable` columns to
 * their minimum (widest first; their text wraps); undefined when the table fits as it is.
 */
export function fitColumns(head: string[], rows: string[][], width: number | undefined, shrinkable: Record<number, number>): number[] | undefined {
  if (width === undefined) return undefined
  const w = head.map((h, i) => Math.max(visible(h), ...rows.map((r) => visible(r[i] ?? ''))) + 2)
  let over = w.reduce((a, b) => a + b, 0) + w.length + 1 - width
  if (over <= 0) return undefined
  while (over > 0) {
    const i = Object.keys(shrinkable)
      .map(Number)
      .filter((k) => w[k]! > shrinkable[k]! + 2)
      .sort((x, y) => w[y]! - w[x]!)[0]
    if (i === undefined) break
    w[i]!--
    over--
  }
  return w
}

/** Cut text with no spaces to wrap on (a path) into lines of `n` characters. */
function hardWrap(text: string, n: number): string {
  const chars = [...text]
  const out: string[] = []
  for (let i = 0; i < chars.length; i += n) out.push(chars.slice(i, i + n).join(''))
  return out.join('\n')
}

/** A group whose state cannot be read or trusted: the file, the reason, the fix. */
export function renderDamagedGroup(d: DamagedGroupReport): string {
  return [`Group ${d.name}: ${colour.error('DAMAGED')} (${d.damaged.file})`, `  ${d.damaged.reason}`, ...(d.damaged.fix ? [`  ${d.damaged.fix}`] : [])].join('\n')
}

/** status: one table per group. */
export function renderGroupStatus(s: GroupStatus): string {
  const lines = [`Group ${s.name}: source ${s.source.path} (${humanBytes(s.source.size)}), extent ${humanBytes(s.extentSize)} × ${s.extentCount}`]
  if (s.operation) {
    const o = s.operation
    const verb = o.kind === 'restore' ? `${o.protected === false ? 'unprotected' : 'protected'} restore from ${o.clone}` : `sync of ${o.clone}`
    lines.push(
      o.state === 'running'
        ? `  ${verb}: ${o.paused ? `PAUSED (resume with \`clonectl job resume ${s.name}\`)` : 'running'} (pid ${o.pid}), ${o.percentDone}% done, ${o.remainingExtents} extents left${o.paused === undefined ? '' : `, rate ${rateText(o.rate)}`}`
        : `  ${verb}: INTERRUPTED at ${o.percentDone}% (${o.remainingExtents} extents left) — resume with \`clonectl ${o.kind === 'restore' ? `restore ${s.name}` : `clone sync ${s.name} ${o.clone}`}\``,
    )
  }
  if (s.server) {
    lines.push(`  served by pid ${s.server.pid}${s.server.nbdSocket ? ` on nbd+unix:///?socket=${s.server.nbdSocket}` : ''}${s.server.tcpPort ? ` ${s.server.nbdSocket ? 'and' : 'on'} TCP port ${s.server.tcpPort}` : ''}, ${s.server.connections} connection(s)`)
  } else if (!s.operation && s.lockedBy) {
    lines.push(`  in use by pid ${s.lockedBy.pid} (${s.lockedBy.command}) since ${s.lockedBy.startedAt}`)
  }
  if (s.clones.length === 0) {
    lines.push('  no clones (add one with `clonectl clone add`)')
    return lines.join('\n')
  }
  const head = ['clone', 'state', 'dirty', 'in sync', 'last sync', 'last fracture', 'path']
  // A clone whose volume is gone is no copy to count on, whatever its record says.
  const reasonOf = (c: (typeof s.clones)[number]): string | undefined => (c.unavailable ? `${c.unavailable}; recorded as ${c.state}` : c.stateReason)
  const row = (c: (typeof s.clones)[number], withReason: boolean): string[] => {
    const reason = reasonOf(c)
    return [
      c.name,
      colour.state(c.unavailable ? 'unavailable' : c.state) +
        (reason ? (withReason ? colour.dim(` (${reason})`) : ' (see below)') : '') +
        (c.trusted ? '' : ' [map untrusted]') +
        (c.damagedMapPages ? ` [map damaged: ${c.damagedMapPages.length} page(s) taken as dirty]` : ''),
      `${c.dirtyExtents} ext / ${humanBytes(c.dirtyBytes)}`,
      `${c.inSyncPercent.toFixed(1)}%`,
      humanAge(c.lastSyncAt),
      humanAge(c.lastFractureAt),
      c.path,
    ]
  }
  // Fit the terminal: reasons move below the table, then the columns that can wrap do (a
  // path is cut anywhere: it has no spaces).
  const width = outputColumns()
  const shrink = {1: 13, 2: 7, 4: 6, 5: 8, 6: 10}
  let rows = s.clones.map((c) => row(c, true))
  let widths = fitColumns(head, rows, width, shrink)
  const footnotes = widths !== undefined
  if (footnotes) {
    rows = s.clones.map((c) => row(c, false))
    widths = fitColumns(head, rows, width, shrink)
  }
  if (widths) for (const r of rows) r[6] = hardWrap(r[6]!, widths[6]! - 2)
  lines.push(renderTable(head, rows, widths))
  if (footnotes) for (const c of s.clones) if (reasonOf(c)) lines.push(`  ${c.name}: ${reasonOf(c)}`)
  for (const c of s.clones) if (c.mapDamage) lines.push(`  ${c.name}: ${c.mapDamage}`)
  return lines.join('\n')
}

/** A --rate as given (binary units, as parseSize reads them). */
function rateText(rate: number | undefined): string {
  return rate ? `${humanBytes(rate)}/s` : 'unlimited'
}

/** job list: one row a running job. */
export function renderJobs(jobs: JobInfo[]): string {
  return renderTable(
    ['group', 'job', 'state', 'done', 'rate', 'run by'],
    jobs.map((j) => [
      j.group,
      `${j.kind} of ${j.clone}`,
      j.state,
      `${j.percentDone}% (${humanBytes(j.doneBytes)} of ${humanBytes(j.totalBytes)})`,
      rateText(j.rate),
      `${j.runner === 'serve' ? 'serve' : 'foreground'}, pid ${j.pid}`,
    ]),
  )
}

/** One line for job pause/resume/rate/cancel. */
export function describeJob(j: JobInfo): string {
  return `${j.kind} of clone ${j.clone} in group ${j.group}: ${j.state}, ${j.percentDone}% done, rate ${rateText(j.rate)} (${j.runner === 'serve' ? 'under serve' : 'foreground'}, pid ${j.pid})`
}
