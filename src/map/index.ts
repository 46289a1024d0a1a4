export {ExtentBitmap, MAX_EXTENTS} from './ExtentBitmap.js'
export {crc32c} from './crc32c.js'
export {
  CheckpointTicket,
  EXTENTS_PER_PAGE,
  MAP_MAGIC,
  MAP_VERSION,
  PAGE,
  PersistentMap,
  bitmapBytes,
  decodeHeader,
  encodeHeader,
  mapFileSize,
  type MapExpectation,
  type MapHeader,
  type MapKind,
} from './PersistentMap.js'
