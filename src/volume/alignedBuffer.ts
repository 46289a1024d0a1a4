/**
 * Page-aligned buffers for bulk copies, so a volume may move them through O_DIRECT. Node
 * cannot align a Buffer, but a WebAssembly.Memory's backing store is page-aligned (zeroed,
 * committed on touch, like Buffer.allocUnsafe's pages).
 */

/** Offset, length and memory alignment asked of O_DIRECT I/O (≥ any logical block size). */
export const DIRECT_ALIGN = 4096

const aligned = new WeakSet<ArrayBufferLike>()

/** A page-aligned buffer of `size` bytes. */
export function alignedBuffer(size: number): Buffer {
  if (size <= 0) return Buffer.alloc(0)
  const pages = Math.ceil(size / 65_536)
  const mem = new WebAssembly.Memory({initial: pages, maximum: pages})
  aligned.add(mem.buffer)
  return Buffer.from(mem.buffer, 0, size)
}

/** True when `data` starts at a DIRECT_ALIGN boundary of memory (an alignedBuffer() slice there), as O_DIRECT asks. */
export function alignedMemory(data: Uint8Array): boolean {
  return data.byteOffset % DIRECT_ALIGN === 0 && aligned.has(data.buffer)
}

/** True when I/O of `data` at `position` meets O_DIRECT's alignment (and is at least minLength). */
export function directAligned(position: number, data: Uint8Array, minLength = 0): boolean {
  return data.byteLength >= minLength && position % DIRECT_ALIGN === 0 && data.byteLength % DIRECT_ALIGN === 0 && data.byteOffset % DIRECT_ALIGN === 0 && aligned.has(data.buffer)
}
