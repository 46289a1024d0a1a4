export {ExtentBitmap} from './ExtentBitmap.js'
export {crc32c} from './crc32c.js'
export {PersistentMap, type MapHeader, type MapKind, type CheckpointTicket} from './PersistentMap.js'
