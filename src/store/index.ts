export * from './GroupRecord.js'
export {GroupStore} from './GroupStore.js'
export {GroupLock, type HolderInfo} from './GroupLock.js'
export {ensureStateDir, resolveStateDir, validateName} from './stateDir.js'
