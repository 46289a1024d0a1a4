export {NbdServer, type NbdServerOptions} from './NbdServer.js'
export type {ExportBackend} from './ExportBackend.js'
export * as protocol from './protocol.js'
