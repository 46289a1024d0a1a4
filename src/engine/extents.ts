/** The extents [first, end) that bytes [offset, offset+length) touch. */
export function extentRange(offset: number, length: number, extentSize: number): [number, number] {
  if (length <= 0) return [Math.floor(offset / extentSize), Math.floor(offset / extentSize)]
  return [Math.floor(offset / extentSize), Math.floor((offset + length - 1) / extentSize) + 1]
}

/** True when bytes [offset, offset+length) cover extent e whole (the last extent may be short). */
export function coversWhole(offset: number, length: number, e: number, extentSize: number, volumeSize: number): boolean {
  const start = e * extentSize
  const end = Math.min(start + extentSize, volumeSize)
  return offset <= start && offset + length >= end
}
