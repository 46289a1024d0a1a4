import type {Volume} from './Volume.js'

/**
 * Which extents of [pos, pos+len) read as zeros by `vol`'s allocation alone (its holes and
 * zero runs: Volume.extents), so that nothing need be read there: out[i] = 1 for the extent
 * at pos + i × extentSize, wholly inside such a run (the last extent may end short, at
 * pos + len). `pos` is extent-aligned. Undefined when no extent is (a volume that cannot
 * tell says data). Waits (lseek, or an NBD block status round trip).
 */
export async function zeroExtents(vol: Volume, pos: number, len: number, extentSize: number): Promise<Uint8Array | undefined> {
  const count = Math.ceil(len / extentSize)
  let out: Uint8Array | undefined
  for (const r of await vol.extents(pos, len)) {
    if (r.kind === 'data') continue
    const a = r.offset - pos
    const b = a + r.length
    for (let i = Math.ceil(a / extentSize); i < count; i++) {
      if (Math.min((i + 1) * extentSize, len) > b) break
      ;(out ??= new Uint8Array(count))[i] = 1
    }
  }
  return out
}

/**
 * Read [pos, pos+len) of two volumes to compare them, skipping the extents that are holes (or
 * zero runs) on both: those are equal without a read (`bothZero(i)` for the extent at
 * pos + i × extentSize); the buffers' bytes there are zeros, never compared. The runs in
 * between are read from both at once. Waits.
 */
export async function readForCompare(a: Volume, b: Volume, pos: number, len: number, extentSize: number): Promise<{a: Buffer; b: Buffer; bothZero: (i: number) => boolean}> {
  const [za, zb] = await Promise.all([zeroExtents(a, pos, len, extentSize), zeroExtents(b, pos, len, extentSize)])
  const bothZero = (i: number): boolean => za?.[i] === 1 && zb?.[i] === 1
  const count = Math.ceil(len / extentSize)
  if (!za || !zb) return {a: await a.read(pos, len), b: await b.read(pos, len), bothZero}
  const bufA = Buffer.alloc(len)
  const bufB = Buffer.alloc(len)
  const reads: Array<Promise<unknown>> = []
  for (let i = 0; i < count; ) {
    if (bothZero(i)) {
      i++
      continue
    }
    let j = i + 1
    while (j < count && !bothZero(j)) j++
    const off = i * extentSize
    const n = Math.min(j * extentSize, len) - off
    reads.push(a.read(pos + off, n, bufA.subarray(off, off + n)), b.read(pos + off, n, bufB.subarray(off, off + n)))
    i = j
  }
  await Promise.all(reads)
  return {a: bufA, b: bufB, bothZero}
}
