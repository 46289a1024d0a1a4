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
