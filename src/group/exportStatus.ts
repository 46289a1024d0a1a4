/**
 * What `serve` answers to NBD_CMD_BLOCK_STATUS (the MetaContextSource of the group's export).
 *
 * Contexts:
 * - `base:allocation`: holes and zero runs of the source (its Volume.extents(): lseek
 *   SEEK_DATA/SEEK_HOLE on an image file), as NBD_STATE_HOLE|NBD_STATE_ZERO.
 * - `clonectl:delta:CLONE`, one per clone, as qemu-nbd's `qemu:dirty-bitmap:NAME`: flag 1
 *   (dirty) on every extent whose D bit is set, i.e. that may differ from that clone — what
 *   a backup tool must pull to bring a copy of the fractured clone up to the source. For the
 *   clone a protected restore reads from, D[c] | P (INV-1 for c). In extent-size
 *   granularity, clipped to the request. A clone removed while a client holds its id
 *   answers all-dirty: never a clean extent nobody vouches for.
 *
 * The rule for base:allocation during a restore (never report a hole that a read would not
 * return as zeros): a host read of an extent that still needs its copy from the clone
 * (D[c] ∧ ¬P, or one being copied now: in S) first copies it (COD), so the source's holes
 * there are not yet the truth. Such extents are reported as data (allocated, not zero). The
 * set of those extents is taken BEFORE the source is asked: an extent the restore finishes
 * in between is then still reported as data (safe), while one that was no longer pending is
 * final on the source, so what lseek then sees is what a read returns.
 */
import {BASE_ALLOCATION, type MetaContextSource, STATE_DIRTY, allocationFlags, extentRuns} from '../nbd/BlockStatus.js'
import type {StatusRun} from '../nbd/protocol.js'
import type {HostIO} from '../engine/HostIO.js'

export const DELTA_PREFIX = 'clonectl:delta:'
/** One BLOCK_STATUS looks at most this much of the source: bounds the synchronous lseeks per request. */
const QUERY_MAX = 256 * 1024 * 1024

export class ExportStatus implements MetaContextSource {
  constructor(private readonly host: HostIO) {}

  contexts(): string[] {
    return [BASE_ALLOCATION, ...[...this.host.g.members.keys()].map((n) => DELTA_PREFIX + n)]
  }

  async status(context: string, offset: number, length: number): Promise<StatusRun[]> {
    const len = Math.min(length, QUERY_MAX)
    if (context === BASE_ALLOCATION) return this.allocation(offset, len)
    const g = this.host.g
    const m = context.startsWith(DELTA_PREFIX) ? g.members.get(context.slice(DELTA_PREFIX.length)) : undefined
    if (!m) return [{length: len, flags: STATE_DIRTY}]
    const r = this.host.restore
    const P = r && r.member === m ? r.P?.bits : undefined
    const D = m.map.bits
    return extentRuns(offset, len, g.extentSize, (e) => (D.get(e) || (P?.get(e) ?? false) ? STATE_DIRTY : 0))
  }

  private async allocation(offset: number, length: number): Promise<StatusRun[]> {
    const g = this.host.g
    const X = g.extentSize
    const first = Math.floor(offset / X)
    const last = Math.ceil((offset + length) / X)
    // Snapshot first (see the rule above), then ask the source.
    const pending: Array<[number, number]> = []
    const r = this.host.restore
    if (r) {
      const D = r.member.map.bits
      const P = r.P?.bits
      for (let e = first; e < last; e++) {
        if (!((D.get(e) && !(P?.get(e) ?? false)) || g.scoreboard.has(e))) continue
        const a = Math.max(e * X, offset)
        const b = Math.min((e + 1) * X, offset + length)
        const prev = pending.at(-1)
        if (prev && prev[1] === a) prev[1] = b
        else pending.push([a, b])
      }
    }
    const extents = await g.src.extents(offset, length)
    const out: StatusRun[] = []
    let i = 0
    for (const x of extents) {
      let pos = x.offset
      const end = x.offset + x.length
      const flags = allocationFlags(x.kind)
      while (pos < end) {
        while (i < pending.length && pending[i][1] <= pos) i++
        const p = pending[i]
        if (flags === 0 || !p || p[0] >= end) {
          out.push({length: end - pos, flags})
          break
        }
        if (p[0] > pos) {
          out.push({length: p[0] - pos, flags})
          pos = p[0]
        }
        const stop = Math.min(p[1], end)
        out.push({length: stop - pos, flags: 0})
        pos = stop
      }
    }
    return out
  }
}
