export * from './GroupRecord.js'
export {GROUP_FILE, GroupStore, isOwnGroupFile, type VolumeUse} from './GroupStore.js'
export {type AcquireOptions, describeHolder, GroupLock, type HolderInfo, STALE_MS, UPDATE_MS} from './GroupLock.js'
export {ensureStateDir, isValidName, resolveStateDir, ROOT_STATE_DIR, validateName} from './stateDir.js'
