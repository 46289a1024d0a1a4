/**
 * NBD block status: which meta contexts an export offers, which a client's queries select,
 * and the runs that answer NBD_CMD_BLOCK_STATUS. NbdServer only negotiates and dispatches;
 * what a context means belongs to its MetaContextSource (for `serve`, src/group/exportStatus.ts).
 *
 * Rules kept here (NetworkBlockDevice/nbd doc/proto.md, "Metadata querying"):
 * - A query is a full context name, or (LIST only) a namespace prefix ending in ':' that
 *   lists every context under it ("base:", "clonectl:", "clonectl:delta:"); an empty query
 *   list LISTs every context and SETs none. SET selects exact names only; unknown names are
 *   silently not selected, as the spec asks.
 * - Context ids are the 1-based position in the source's list at SET time; they stay valid
 *   for the connection (a clone removed later answers all-dirty, never another clone's map).
 * - Runs cover the request from its offset, are never empty, never go past the request (nor
 *   the export's end), and there are at most MAX_RUNS of them: a reply may stop short, the
 *   client asks again from where it ended. With REQ_ONE, exactly one run.
 */
import {StateFlag, type StatusRun} from './protocol.js'

export const BASE_ALLOCATION = 'base:allocation'
/** A delta context's flag: the extent may differ from that clone. */
export const STATE_DIRTY = 1
/** Descriptors per reply chunk (8 bytes each): a reply stays under 256 KiB. */
export const MAX_RUNS = 32 * 1024

export interface MetaContextSource {
  /** Every context the export offers now, in a stable order. */
  contexts(): string[]
  /**
   * The runs of [offset, offset+length) in `context` (a name that contexts() listed), from
   * `offset` on, in order. May cover less than `length` (at least one byte). Waits.
   */
  status(context: string, offset: number, length: number): Promise<StatusRun[]>
}

/** The contexts `queries` select from `available`: exact names, and for LIST namespace prefixes. */
export function selectContexts(available: readonly string[], queries: readonly string[], list: boolean): string[] {
  if (queries.length === 0) return list ? [...available] : []
  const out = new Set<string>()
  for (const q of queries) {
    if (available.includes(q)) out.add(q)
    else if (list && q.endsWith(':') && q.includes(':')) for (const a of available) if (a.startsWith(q)) out.add(a)
  }
  return available.filter((a) => out.has(a))
}

/** Merge adjacent runs with the same flags and clip the total to `length` (REQ_ONE: one run). */
export function finishRuns(runs: readonly StatusRun[], length: number, reqOne: boolean): StatusRun[] {
  const out: StatusRun[] = []
  let total = 0
  for (const r of runs) {
    if (total >= length || out.length > MAX_RUNS) break
    const n = Math.min(r.length, length - total)
    if (n <= 0) continue
    const last = out.at(-1)
    if (last && last.flags === r.flags) last.length += n
    else out.push({length: n, flags: r.flags})
    total += n
  }
  if (out.length > MAX_RUNS) out.length = MAX_RUNS
  return reqOne ? out.slice(0, 1) : out
}

/** base:allocation flags of a volume extent kind: a hole reads as zeros too. */
export function allocationFlags(kind: 'data' | 'zero' | 'hole'): number {
  return kind === 'hole' ? StateFlag.HOLE | StateFlag.ZERO : kind === 'zero' ? StateFlag.ZERO : 0
}

/**
 * Runs of [offset, offset+length) at extent granularity: each extent e gets `flagsOf(e)`.
 * The first and last runs are clipped to the request. Stops after MAX_RUNS runs.
 */
export function extentRuns(offset: number, length: number, extentSize: number, flagsOf: (e: number) => number): StatusRun[] {
  const out: StatusRun[] = []
  const end = offset + length
  let pos = offset
  while (pos < end && out.length <= MAX_RUNS) {
    const e = Math.floor(pos / extentSize)
    const next = Math.min((e + 1) * extentSize, end)
    const flags = flagsOf(e)
    const last = out.at(-1)
    if (last && last.flags === flags) last.length += next - pos
    else out.push({length: next - pos, flags})
    pos = next
  }
  return out
}
