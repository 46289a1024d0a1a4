import {VerifyMismatchError} from '../errors/errors.js'
import {ExtentBitmap} from '../map/ExtentBitmap.js'
import {readForCompare} from '../volume/holes.js'
import type {CloneGroup} from './CloneGroup.js'

export interface VerifyReport {
  group: string
  clone: string
  extents: number
  /** Extents that differ while their delta bit is clear: an invariant violation. */
  violations: number[]
  /** Extents marked in the map but equal: harmless (they cost a copy). */
  markedEqual: number
  /** Extents marked and different: what the next sync copies. */
  markedDifferent: number
  repaired: boolean
}

/**
 * Compare source and clone extent by extent against the clone's delta map; where both are
 * holes (Volume.extents) the extent is equal without a read. With repair, the
 * map is rebuilt exactly (bit set ⇔ the extent differs) and made durable. Runs under the group
 * lock; reads only, except the map on repair. Waits.
 */
export async function verifyClone(
  g: CloneGroup,
  clone: string,
  opts: {repair?: boolean; onProgress?: (done: number, total: number) => void; signal?: AbortSignal} = {},
): Promise<VerifyReport> {
  const m = g.member(clone)
  const D = m.map
  const exact = new ExtentBitmap(g.extentCount)
  const violations: number[] = []
  let markedEqual = 0
  let markedDifferent = 0
  const chunkExtents = Math.max(1, Math.floor((4 * 1024 * 1024) / g.extentSize))
  for (let start = 0; start < g.extentCount; start += chunkExtents) {
    if (opts.signal?.aborted) break
    const end = Math.min(g.extentCount, start + chunkExtents)
    const pos = start * g.extentSize
    const len = Math.min(end * g.extentSize, g.volumeSize) - pos
    // A hole (or zero run) on both sides is equal without reading either (issue 16).
    const {a, b, bothZero} = await readForCompare(g.src, m.vol, pos, len, g.extentSize)
    for (let e = start; e < end; e++) {
      const off = (e - start) * g.extentSize
      const n = Math.min(g.extentSize, len - off)
      const differs = !bothZero(e - start) && a.compare(b, off, off + n, off, off + n) !== 0
      if (differs) exact.set(e)
      if (differs && !D.bits.get(e)) violations.push(e)
      else if (!differs && D.bits.get(e)) markedEqual++
      else if (differs) markedDifferent++
    }
    opts.onProgress?.(end, g.extentCount)
  }
  let repaired = false
  if (opts.repair && !opts.signal?.aborted) {
    await g.checkpoint()
    await D.replaceAll(exact)
    m.record.trusted = true
    delete m.record.untrustedReason
    if (m.state === 'synchronized' && !exact.isEmpty()) m.apply('verify-differs', {reason: 'verify found differences'})
    // D[k] is exact now. A change found at open left every other map untrusted in this same
    // record, so the fingerprints may be refreshed in the same save: no knowledge is lost.
    await g.refreshFingerprints()
    await g.save()
    repaired = true
  }
  return {group: g.name, clone, extents: g.extentCount, violations, markedEqual, markedDifferent, repaired}
}

export function assertVerified(r: VerifyReport): void {
  if (r.violations.length > 0 && !r.repaired)
    throw new VerifyMismatchError(
      `clone ${r.clone} of group ${r.group}: ${r.violations.length} extent(s) differ from the source while the delta map says they are equal (first: ${r.violations.slice(0, 5).join(', ')})`,
      `run \`clonectl verify ${r.group} ${r.clone} --repair\` to rebuild the map, then \`clonectl clone sync ${r.group} ${r.clone}\``,
      r,
    )
}
