/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven, one byte at a time:
 * what a map file's header carries (DESIGN §3). Check value: crc32c("123456789") = 0xE3069283.
 */
const TABLE = (() => {
  const t = new Uint32Array(256)
  for (let i = 0; i < 256; i++) {
    let c = i
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    t[i] = c >>> 0
  }
  return t
})()

/**
 * CRC-32C of `data`. `seed` is the CRC of the data before it (default 0, i.e. none), so
 * crc32c(b, crc32c(a)) === crc32c(a ++ b).
 */
export function crc32c(data: Uint8Array, seed = 0): number {
  let c = ~seed >>> 0
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8)
  return ~c >>> 0
}
