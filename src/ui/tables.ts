import Table from 'cli-table3'
import type {GroupStatus} from '../group/GroupStatus.js'
import type {JobInfo} from '../group/JobControl.js'
import type {DamagedGroupReport} from '../store/GroupStore.js'
import {humanAge, humanBytes} from './format.js'
import {colour, stdoutIsLive} from './terminal.js'

function table(head: string[]): Table.Table {
  return new Table({head, style: {head: stdoutIsLive() ? ['cyan'] : [], border: stdoutIsLive() ? ['grey'] : []}})
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
  const t = table(['clone', 'state', 'dirty', 'in sync', 'last sync', 'last fracture', 'path'])
  for (const c of s.clones)
    t.push([
      c.name,
      colour.state(c.state) + (c.stateReason ? colour.dim(` (${c.stateReason})`) : '') + (c.trusted ? '' : ' [map untrusted]') + (c.damagedMapPages ? ` [map damaged: ${c.damagedMapPages.length} page(s) taken as dirty]` : ''),
      `${c.dirtyExtents} ext / ${humanBytes(c.dirtyBytes)}`,
      `${c.inSyncPercent.toFixed(1)}%`,
      humanAge(c.lastSyncAt),
      humanAge(c.lastFractureAt),
      c.path,
    ])
  lines.push(t.toString())
  for (const c of s.clones) if (c.mapDamage) lines.push(`  ${c.name}: ${c.mapDamage}`)
  return lines.join('\n')
}

export function renderRows(head: string[], rows: string[][]): string {
  const t = table(head)
  for (const r of rows) t.push(r)
  return t.toString()
}

/** A --rate as given (binary units, as parseSize reads them). */
function rateText(rate: number | undefined): string {
  return rate ? `${humanBytes(rate)}/s` : 'unlimited'
}

/** job list: one row a running job. */
export function renderJobs(jobs: JobInfo[]): string {
  const t = table(['group', 'job', 'state', 'done', 'rate', 'run by'])
  for (const j of jobs)
    t.push([
      j.group,
      `${j.kind} of ${j.clone}`,
      j.state,
      `${j.percentDone}% (${humanBytes(j.doneBytes)} of ${humanBytes(j.totalBytes)})`,
      rateText(j.rate),
      `${j.runner === 'serve' ? 'serve' : 'foreground'}, pid ${j.pid}`,
    ])
  return t.toString()
}

/** One line for job pause/resume/rate/cancel. */
export function describeJob(j: JobInfo): string {
  return `${j.kind} of clone ${j.clone} in group ${j.group}: ${j.state}, ${j.percentDone}% done, rate ${rateText(j.rate)} (${j.runner === 'serve' ? 'under serve' : 'foreground'}, pid ${j.pid})`
}
