-- jobscheduler.lua: Wireshark dissector for JobScheduler 1.x remote execution.
--
-- Two protocols (PROTOCOL.md is the authority for every byte):
--   jobscheduler      the XML command channel, controller -> remote scheduler port (§3)
--   jobscheduler_api  the binary object-server ("callback") channel, task server -> the
--                     per-task port the controller announced in start_remote_task (§5, §6)
-- Both are tied together per task (§7): jobscheduler.process_id is on every frame with
-- payload of both connections of a task once the start answer has been seen (all frames
-- in a two-pass run, tshark -2 or the GUI).
--
-- Works on Wireshark 4.0 (Lua 5.2) through 4.6 (Lua 5.4): bit operations only through the
-- global `bit` table, integer division through math.floor, optional APIs feature-detected
-- and registered under pcall.
--
-- Install: copy this file into the personal Lua plugins folder (see wireshark/README.md)
-- or run `tshark -X lua_script:jobscheduler.lua ...`.

local PLUGIN_VERSION = "0.1.0"

if set_plugin_info then
    set_plugin_info({
        version = PLUGIN_VERSION,
        description = "JobScheduler 1.x remote execution: XML command channel and "
            .. "object-server callback channel",
        repository = "jsdissect",
    })
end

---------------------------------------------------------------------------------------------
-- Protocols, fields, expert info, preferences
---------------------------------------------------------------------------------------------

local p_cmd = Proto("jobscheduler", "JobScheduler Remote Execution")
local p_api = Proto("jobscheduler_api", "JobScheduler Object Server")
-- (named apart from the heuristics, which Wireshark names jobscheduler_tcp and
-- jobscheduler_api_tcp: --disable-heuristic and --disable-protocol take different things)
local p_post = Proto("jobscheduler_tracking", "JobScheduler TCP tracking")

local FRAME_REQUEST = frametype and frametype.REQUEST or nil
local FRAME_RESPONSE = frametype and frametype.RESPONSE or nil
local FRAME_NONE = frametype and frametype.NONE or nil

-- §5.1 message classes
local CLASS_NAMES = {
    [0x53] = "S (session request)",
    [0x4F] = "O (object request)",
    [0x4B] = "K (keep-alive)",
    [0x41] = "A (answer)",
    [0x45] = "E (error answer)",
    [0x4E] = "N (no session/object)",
}

-- §5.9 object commands, and 'C' (CreateInstance) inside S
local COMMAND_NAMES = {
    [0x43] = "CreateInstance",
    [0x52] = "Release",
    [0x51] = "QueryInterface",
    [0x47] = "GetIDsOfNames",
    [0x49] = "Invoke",
    [0x41] = "Call by name",
    [0x4B] = "keep-alive",
}

-- §5.4 VARTYPEs
local VT_NAMES = {
    [0x0000] = "VT_EMPTY", [0x0001] = "VT_NULL", [0x0002] = "VT_I2", [0x0003] = "VT_I4",
    [0x0004] = "VT_R4", [0x0005] = "VT_R8", [0x0006] = "VT_CY", [0x0007] = "VT_DATE",
    [0x0008] = "VT_BSTR", [0x0009] = "VT_DISPATCH", [0x000A] = "VT_ERROR",
    [0x000B] = "VT_BOOL", [0x000C] = "VT_VARIANT", [0x000D] = "VT_UNKNOWN",
    [0x0010] = "VT_I1", [0x0011] = "VT_UI1", [0x0012] = "VT_UI2", [0x0013] = "VT_UI4",
    [0x0014] = "VT_I8", [0x0015] = "VT_UI8", [0x0016] = "VT_INT", [0x0017] = "VT_UINT",
    [0x2008] = "VT_ARRAY|VT_BSTR", [0x200C] = "VT_ARRAY|VT_VARIANT",
    [0x2011] = "VT_ARRAY|VT_UI1",
}

-- §5.10 HRESULTs seen on the wire
local HRESULT_NAMES = {
    [0x00000000] = "S_OK",
    [0x00000001] = "S_FALSE",
    [0x00080012] = "CO_S_NOTALLINTERFACES",
    [0x80004002] = "E_NOINTERFACE",
    [0x80004003] = "E_POINTER",
    [0x80020003] = "DISP_E_MEMBERNOTFOUND",
    [0x80020004] = "DISP_E_PARAMNOTFOUND",
    [0x80020006] = "DISP_E_UNKNOWNNAME",
    [0x80020008] = "DISP_E_BADVARTYPE",
    [0x80020009] = "DISP_E_EXCEPTION",
    [0x8002000E] = "DISP_E_BADPARAMCOUNT",
    [0x80070057] = "E_INVALIDARG",
}

-- §5.12 GUIDs (canonical text) and what they are
local GUID_NAMES = {
    ["feee47a3-6c1b-11d8-8103-000476ee8afb"] = "CLSID Remote_module_instance_server",
    ["feee47a2-6c1b-11d8-8103-000476ee8afb"] = "IID Iremote_module_instance_server",
    ["feee47a6-6c1b-11d8-8103-000476ee8afb"] = "CLSID Com_log_proxy",
    ["feee47aa-6c1b-11d8-8103-000476ee8afb"] = "CLSID Task_proxy",
    ["feee47b3-6c1b-11d8-8103-000476ee8afb"] = "CLSID Spooler_proxy",
}
local CLSID_CLASS = {
    ["feee47a6-6c1b-11d8-8103-000476ee8afb"] = "Com_log",
    ["feee47aa-6c1b-11d8-8103-000476ee8afb"] = "Com_task",
    ["feee47b3-6c1b-11d8-8103-000476ee8afb"] = "Com_spooler",
}

local SIDE_NAMES = { [1] = "controller", [2] = "task server" }
local CMD_MESSAGE_NAMES = { [1] = "command", [2] = "answer", [3] = "keep-alive" }

local F = {}   -- jobscheduler fields
local FA = {}  -- jobscheduler_api fields

-- command channel (§3)
F.message = ProtoField.uint8("jobscheduler.message", "Message", base.DEC, CMD_MESSAGE_NAMES)
F.command = ProtoField.string("jobscheduler.command", "Command")
F.result = ProtoField.string("jobscheduler.answer.result", "Answer result")
F.tcp_port = ProtoField.uint16("jobscheduler.tcp_port", "Callback port (tcp_port)")
F.kind = ProtoField.string("jobscheduler.kind", "Kind")
F.java_options = ProtoField.string("jobscheduler.java_options", "Java options")
F.java_classpath = ProtoField.string("jobscheduler.java_classpath", "Java class path")
F.ip_address = ProtoField.string("jobscheduler.ip_address", "Callback address (ip_address)")
F.process_id = ProtoField.string("jobscheduler.process_id", "Process id (task key)")
F.status = ProtoField.string("jobscheduler.status",
    "Task status (as the task table's; a later pass: the whole file read)")
F.pid = ProtoField.uint64("jobscheduler.pid", "OS pid")  -- the digits as sent, up to 2^64-1
F.close = ProtoField.bool("jobscheduler.close", "Close")
F.kill = ProtoField.bool("jobscheduler.kill", "Kill")
F.signal = ProtoField.string("jobscheduler.signal", "Signal")
F.answer_time = ProtoField.absolute_time("jobscheduler.answer_time", "Answer time", base.UTC)
F.error_code = ProtoField.string("jobscheduler.error.code", "ERROR code")
F.error_text = ProtoField.string("jobscheduler.error.text", "ERROR text")
F.error_class = ProtoField.string("jobscheduler.error.class", "ERROR class")
F.error_time = ProtoField.string("jobscheduler.error.time", "ERROR time")
F.error_source = ProtoField.string("jobscheduler.error.source", "ERROR source")
F.keepalive = ProtoField.uint32("jobscheduler.keepalive.spaces", "Keep-alive spaces")
F.attribute = ProtoField.string("jobscheduler.attribute", "Attribute")
F.document = ProtoField.string("jobscheduler.document", "Document")
F.response_in = ProtoField.framenum("jobscheduler.response_in", "Answer in", base.NONE,
    FRAME_RESPONSE)
F.request_in = ProtoField.framenum("jobscheduler.request_in", "Command in", base.NONE,
    FRAME_REQUEST)
F.time = ProtoField.relative_time("jobscheduler.time", "Time since command")
F.callback_in = ProtoField.framenum("jobscheduler.callback_in", "Callback connection in",
    base.NONE, FRAME_NONE)
F.started_in = ProtoField.framenum("jobscheduler.task_started_in",
    "Task started (begin answered) in", base.NONE, FRAME_NONE)
F.segment = ProtoField.bytes("jobscheduler.segment", "Segment of a message")
F.first_byte = ProtoField.absolute_time("jobscheduler.first_byte_time",
    "Message began (its first byte captured)", base.UTC)

-- callback channel (§5)
FA.length = ProtoField.uint32("jobscheduler_api.length", "Frame length")
FA.class = ProtoField.uint8("jobscheduler_api.class", "Message class", base.HEX, CLASS_NAMES)
FA.command = ProtoField.uint8("jobscheduler_api.command", "Command", base.HEX, COMMAND_NAMES)
FA.sender = ProtoField.uint8("jobscheduler_api.sender", "Sender", base.DEC, SIDE_NAMES)
FA.session = ProtoField.uint64("jobscheduler_api.session_id", "Session id", base.HEX)
FA.object_id = ProtoField.uint64("jobscheduler_api.object_id", "Object id", base.HEX)
FA.object_name = ProtoField.string("jobscheduler_api.object_name", "Object")
FA.object_returned_by = ProtoField.string("jobscheduler_api.object_returned_by",
    "Object returned by")
FA.method = ProtoField.string("jobscheduler_api.method", "Method")
FA.dispid = ProtoField.int32("jobscheduler_api.dispid", "DISPID")
FA.flags = ProtoField.uint32("jobscheduler_api.flags", "Invoke flags", base.HEX)
FA.flag_method = ProtoField.bool("jobscheduler_api.flags.method", "METHOD", 32, nil, 0x1)
FA.flag_get = ProtoField.bool("jobscheduler_api.flags.propertyget", "PROPERTYGET", 32, nil, 0x2)
FA.flag_put = ProtoField.bool("jobscheduler_api.flags.propertyput", "PROPERTYPUT", 32, nil, 0x4)
FA.flag_putref = ProtoField.bool("jobscheduler_api.flags.propertyputref", "PROPERTYPUTREF", 32,
    nil, 0x8)
FA.clsid = ProtoField.guid("jobscheduler_api.clsid", "CLSID")
FA.iid = ProtoField.guid("jobscheduler_api.iid", "IID")
FA.iid_count = ProtoField.uint32("jobscheduler_api.iid_count", "Number of IIDs")
FA.context = ProtoField.uint32("jobscheduler_api.context", "Context")
FA.lcid = ProtoField.uint32("jobscheduler_api.lcid", "LCID", base.HEX)
FA.name_count = ProtoField.uint32("jobscheduler_api.name_count", "Number of names")
FA.args = ProtoField.uint32("jobscheduler_api.args", "Arguments (cArgs)")
FA.named_args = ProtoField.uint32("jobscheduler_api.named_args", "Named arguments")
FA.named_dispid = ProtoField.int32("jobscheduler_api.named_dispid", "Named argument DISPID")
FA.argument = ProtoField.none("jobscheduler_api.argument", "Argument")
FA.variant = ProtoField.none("jobscheduler_api.variant", "VARIANT")
FA.vt = ProtoField.uint32("jobscheduler_api.vt", "VARTYPE", base.HEX, VT_NAMES)
FA.v_int = ProtoField.int32("jobscheduler_api.value.int", "Integer")
FA.v_uint = ProtoField.uint32("jobscheduler_api.value.uint", "Unsigned")
FA.v_int64 = ProtoField.int64("jobscheduler_api.value.int64", "Integer (64 bit)")
FA.v_uint64 = ProtoField.uint64("jobscheduler_api.value.uint64", "Unsigned (64 bit)")
FA.v_bool = ProtoField.bool("jobscheduler_api.value.bool", "Boolean")
FA.v_string = ProtoField.string("jobscheduler_api.value.string", "String")
FA.v_real = ProtoField.double("jobscheduler_api.value.real", "Number")
FA.v_real_text = ProtoField.string("jobscheduler_api.value.real_text", "Number as sent")
FA.v_error = ProtoField.uint32("jobscheduler_api.value.error", "Error (VT_ERROR)", base.HEX,
    HRESULT_NAMES)
FA.array = ProtoField.none("jobscheduler_api.array", "SAFEARRAY")
FA.array_dims = ProtoField.int16("jobscheduler_api.array.dims", "Dimensions")
FA.array_features = ProtoField.uint16("jobscheduler_api.array.features", "Features", base.HEX)
FA.array_count = ProtoField.uint32("jobscheduler_api.array.count", "Elements")
FA.array_lbound = ProtoField.int32("jobscheduler_api.array.lbound", "Lower bound")
FA.array_vt = ProtoField.uint32("jobscheduler_api.array.vt", "Element type", base.HEX, VT_NAMES)
FA.array_bytes = ProtoField.bytes("jobscheduler_api.array.bytes", "Bytes")
FA.objref = ProtoField.none("jobscheduler_api.objref", "Object reference")
FA.objref_id = ProtoField.uint64("jobscheduler_api.objref.id", "Object id", base.HEX)
FA.objref_new = ProtoField.bool("jobscheduler_api.objref.is_new", "New")
FA.objref_title = ProtoField.string("jobscheduler_api.objref.title", "Title")
FA.objref_clsid = ProtoField.guid("jobscheduler_api.objref.clsid", "Proxy CLSID")
FA.objref_props = ProtoField.uint32("jobscheduler_api.objref.properties", "Properties")
FA.objref_prop = ProtoField.string("jobscheduler_api.objref.property", "Property")
FA.objref_name = ProtoField.string("jobscheduler_api.objref.name", "Object")
FA.objref_returned_by = ProtoField.string("jobscheduler_api.objref.returned_by", "Returned by")
FA.hresult = ProtoField.uint32("jobscheduler_api.hresult", "HRESULT", base.HEX, HRESULT_NAMES)
FA.hresult_name = ProtoField.string("jobscheduler_api.hresult.name", "HRESULT name")
FA.arg_err = ProtoField.int32("jobscheduler_api.arg_err", "Argument in error")
FA.excepinfo = ProtoField.none("jobscheduler_api.excepinfo", "EXCEPINFO")
FA.exc_code = ProtoField.uint16("jobscheduler_api.excepinfo.code", "wCode")
FA.exc_reserved = ProtoField.uint16("jobscheduler_api.excepinfo.reserved", "wReserved")
FA.exc_source = ProtoField.string("jobscheduler_api.excepinfo.source", "Source")
FA.exc_description = ProtoField.string("jobscheduler_api.excepinfo.description", "Description")
FA.exc_helpfile = ProtoField.string("jobscheduler_api.excepinfo.helpfile", "Help file")
FA.exc_helpcontext = ProtoField.uint32("jobscheduler_api.excepinfo.helpcontext", "Help context")
FA.exc_scode = ProtoField.uint32("jobscheduler_api.excepinfo.scode", "scode", base.HEX,
    HRESULT_NAMES)
FA.error_name = ProtoField.string("jobscheduler_api.error.name", "Error name")
FA.error_code = ProtoField.string("jobscheduler_api.error.code", "Error code")
FA.error_what = ProtoField.string("jobscheduler_api.error.what", "Error text")
FA.error_string = ProtoField.string("jobscheduler_api.error.string", "Error string")
FA.response_in = ProtoField.framenum("jobscheduler_api.response_in", "Answer in", base.NONE,
    FRAME_RESPONSE)
FA.request_in = ProtoField.framenum("jobscheduler_api.request_in", "Request in", base.NONE,
    FRAME_REQUEST)
FA.time = ProtoField.relative_time("jobscheduler_api.time", "Time since request")
FA.depth = ProtoField.uint32("jobscheduler_api.depth", "Callback nesting level")
FA.announced_in = ProtoField.framenum("jobscheduler_api.announced_in", "Callback announced in",
    base.NONE, FRAME_NONE)
FA.param = ProtoField.string("jobscheduler_api.construct.param", "Task parameter")
FA.job = ProtoField.string("jobscheduler_api.job", "Job")
FA.task_id = ProtoField.uint32("jobscheduler_api.task_id", "Task id")
FA.started = ProtoField.bool("jobscheduler_api.task_started", "Task started")
FA.step = ProtoField.uint32("jobscheduler_api.step", "Step number")
FA.exit_code = ProtoField.int32("jobscheduler_api.exit_code", "Exit code")
FA.signal = ProtoField.int32("jobscheduler_api.signal", "Signal")
FA.log_text = ProtoField.string("jobscheduler_api.log.text", "Log text")
FA.log_level = ProtoField.int32("jobscheduler_api.log.level", "Log level")
FA.log_lines = ProtoField.uint32("jobscheduler_api.log.lines", "Log lines")
FA.segment = ProtoField.bytes("jobscheduler_api.segment", "Segment of a message")
FA.first_byte = ProtoField.absolute_time("jobscheduler_api.first_byte_time",
    "Message began (its first byte captured)", base.UTC)
FA.last_byte = ProtoField.absolute_time("jobscheduler_api.last_byte_time",
    "Last byte of the frame captured (frame not completely captured)", base.UTC)

local function field_list(t)
    local out = {}
    for _, f in pairs(t) do out[#out + 1] = f end
    return out
end
p_cmd.fields = field_list(F)
p_api.fields = field_list(FA)

local E = {
    cmd_error = ProtoExpert.new("jobscheduler.expert.error", "ERROR answer",
        expert.group.RESPONSE_CODE, expert.severity.ERROR),
    cmd_malformed = ProtoExpert.new("jobscheduler.expert.malformed", "Malformed command channel",
        expert.group.MALFORMED, expert.severity.ERROR),
    -- bytes the capture lost are no malformed data: a warning, as for a callback frame
    cmd_truncated = ProtoExpert.new("jobscheduler.expert.truncated",
        "Message not completely captured", expert.group.MALFORMED, expert.severity.WARN),
    unpaired = ProtoExpert.new("jobscheduler.expert.unpaired", "Answer without a command",
        expert.group.SEQUENCE, expert.severity.WARN),
    -- the task fails (Z-REMOTE-118): errors, as an <ERROR> answer is
    refused = ProtoExpert.new("jobscheduler.expert.callback_refused",
        "Callback connection refused (SYN answered by RST)",
        expert.group.SEQUENCE, expert.severity.ERROR),
    unanswered = ProtoExpert.new("jobscheduler.expert.callback_unanswered",
        "Callback SYN never answered (dropped?)", expert.group.SEQUENCE, expert.severity.ERROR),
    missing = ProtoExpert.new("jobscheduler.expert.callback_missing",
        "No callback connection (within 60 s, or before the command connection ended)",
        expert.group.SEQUENCE, expert.severity.ERROR),
}
local EA = {
    error = ProtoExpert.new("jobscheduler_api.expert.error", "Error answer (E)",
        expert.group.RESPONSE_CODE, expert.severity.ERROR),
    failed = ProtoExpert.new("jobscheduler_api.expert.failed_hresult", "Failed HRESULT",
        expert.group.RESPONSE_CODE, expert.severity.ERROR),
    malformed = ProtoExpert.new("jobscheduler_api.expert.malformed", "Malformed frame",
        expert.group.MALFORMED, expert.severity.ERROR),
    too_long = ProtoExpert.new("jobscheduler_api.expert.length",
        "Announced length beyond the sanity bound", expert.group.MALFORMED,
        expert.severity.ERROR),
    truncated = ProtoExpert.new("jobscheduler_api.expert.truncated",
        "Frame not completely captured", expert.group.MALFORMED, expert.severity.WARN),
    unpaired = ProtoExpert.new("jobscheduler_api.expert.unpaired",
        "Answer without a pending request", expert.group.SEQUENCE, expert.severity.WARN),
    no_session = ProtoExpert.new("jobscheduler_api.expert.no_session",
        "N message (never sent by 1.x peers)", expert.group.PROTOCOL, expert.severity.WARN),
}
p_cmd.experts = field_list(E)
p_api.experts = field_list(EA)

p_cmd.prefs.ports = Pref.range("Command ports", "4444,4455",
    "TCP ports of remote schedulers (XML command channel)", 65535)
p_cmd.prefs.heuristic = Pref.bool("Heuristic detection", true,
    "Recognise the command channel on other ports by its first bytes, and callback "
    .. "connections whose start command was not captured by their first CreateInstance "
    .. "(or a mid-stream request)")
p_cmd.prefs.task_table = Pref.bool("Print task table at the end (tshark)", false,
    "At the end of a tshark run, print the per-task table as CSV on stdout "
    .. "(jsdissect tasks column names)")
p_cmd.prefs.task_table_file = Pref.string("Task table file", "",
    "Write the task table CSV to this file at the end of the run instead of stdout")

---------------------------------------------------------------------------------------------
-- Constants and small helpers
---------------------------------------------------------------------------------------------

local CONTROLLER, TASK_SERVER = 1, 2  -- the two sides of a callback connection (§0)
local ARROWS = { [CONTROLLER] = "C→T ", [TASK_SERVER] = "T→C " }
local MAX_FRAME = 64 * 1024 * 1024  -- sanity bound on a callback frame's length (§5.1)
local MAX_DOCUMENT = 1024 * 1024    -- bound on one XML command or answer (§3)
local MAX_DEPTH = 16                -- nesting of VARIANT arrays / objref properties
local CALLBACK_TIMEOUT_US = 60000000  -- §2: Z-REMOTE-118 after 60 s

local band = bit.band

-- A parse failure inside one message: caught per message, shown as malformed.
local Malformed = {}
local function malformed(reason)
    error(setmetatable({ reason = reason }, Malformed), 0)
end

local function need(tvb, off, n)
    if n < 0 or off + n > tvb:len() then
        malformed(string.format("needs %d bytes at offset %d, frame has %d", n, off, tvb:len()))
    end
end

local function u8(tvb, off) need(tvb, off, 1) return tvb(off, 1):uint() end
local function u32(tvb, off) need(tvb, off, 4) return tvb(off, 4):uint() end
local function i32(tvb, off) need(tvb, off, 4) return tvb(off, 4):int() end
local function hex8(tvb, off) need(tvb, off, 8) return tvb(off, 8):bytes():tohex() end

local function latin1_to_utf8(s)
    return (s:gsub("[\128-\255]", function(c)
        local b = c:byte()
        return string.char(0xC0 + math.floor(b / 64), 0x80 + b % 64)
    end))
end

local function guid_text(tvb, off)
    local h = tvb(off, 16):bytes():tohex():lower()
    return h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-" .. h:sub(13, 16) .. "-" .. h:sub(17, 20)
        .. "-" .. h:sub(21, 32)
end

local function quote(s)
    if #s > 60 then s = s:sub(1, 57) .. "..." end
    return '"' .. s:gsub("[%c]", " ") .. '"'
end

-- Capture time in whole microseconds (DESIGN "Exact times": nanoseconds truncated). The
-- exact value comes from frame.time_epoch, there only when a tree is built (a display
-- filter, the GUI); else the state keeps the value pinfo.abs_ts gives (a double: within
-- 0.24 µs), and the exact value, learnt per frame in the postdissector of a later pass
-- that has a tree, replaces it when the task table is written. (A double cannot tell
-- frames less than about 0.24 µs apart: in a nanosecond capture two such frames on
-- either side of a microsecond boundary keep the same value, and the later one may be
-- written 1 µs early. With a tree in the first pass every time is exact.)
local f_time_epoch = Field.new("frame.time_epoch")
-- TCP's fields, and the tests that tell a later connection on a 4-tuple (below, at the
-- TCP tracking) (one table: the main chunk is near Lua's limit of 200 local variables)
local TCP = {
    len = Field.new("tcp.len"), stream = Field.new("tcp.stream"), seq = Field.new("tcp.seq_raw"),
    ack = Field.new("tcp.ack_raw"), ack_flag = Field.new("tcp.flags.ack"),
    BAND = 16777216,  -- beyond the receive windows in use (jsdissect's tcp STRAGGLER_BAND)
}

local function exact_frame_us()
    local fi = f_time_epoch()
    if fi == nil then return nil end
    return fi.value.secs * 1000000 + math.floor(fi.value.nsecs / 1000)
end

-- `from_double`: the value from pinfo.abs_ts even when the exact one is known.
local function frame_us(pinfo, from_double)
    local exact = not from_double and exact_frame_us()
    if exact then return exact end
    local t = pinfo.abs_ts
    local s = math.floor(t)
    return s * 1000000 + math.floor((t - s) * 1000000 + 0.125)
end

local function us_nstime(us)
    local s = math.floor(us / 1000000)
    return NSTime.new(s, (us - s * 1000000) * 1000)
end

local function iso_us(us)
    if us == nil then return "" end
    local s = math.floor(us / 1000000)
    return os.date("!%Y-%m-%dT%H:%M:%S", s) .. string.format(".%06dZ", us - s * 1000000)
end

-- days since 1970-01-01 of a proleptic Gregorian date (civil calendar, UTC)
local function days_from_civil(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = math.floor(y / 400)
    local yoe = y - era * 400
    local mp = (m + 9) % 12
    local doy = math.floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end

-- §3.4 answer time "YYYY-MM-DDThh:mm:ss.mmmZ"
local function parse_answer_time(text)
    local y, mo, d, h, mi, s, frac = text:match(
        "^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)%.?(%d*)Z?$")
    if not y then return nil end
    local secs = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400
        + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
    local ns = 0
    if frac ~= "" then ns = tonumber((frac .. "000000000"):sub(1, 9)) end
    return NSTime.new(secs, ns)
end

local function endpoint_text(addr, port)
    if addr:find(":", 1, true) then return "[" .. addr .. "]:" .. port end
    return addr .. ":" .. port
end

---------------------------------------------------------------------------------------------
-- State (per capture file; reset in init)
---------------------------------------------------------------------------------------------

local conns       -- 4-tuple key -> current connection record
local tasks       -- every task, in the order it was seen
local records     -- per-message facts decided on the first pass, by message key
local frame_conn  -- frame number -> connection record (first pass)
local incomplete  -- frame number -> frames not completely captured that begin there
local rests       -- frame number -> its first bytes that end a frame not completely captured
local exact_us    -- time as kept (from pinfo.abs_ts) -> exact time, where they differ;
                  -- `rounded`: a first-pass time was kept so (no tree there)
local watched     -- callback port -> true: announced in a start command
local candidates  -- connections that may be callbacks: to a watched port, or this protocol
local capture_end -- latest capture time seen (µs)
local conn_count
local last_main_frame  -- frame the protocol dissectors last ran on (postdissector check)
local registered = {}  -- ports added to the tcp.port table for jobscheduler_api
local cmd_ports = {}   -- command port -> true (preference)

local tcp_port_table = DissectorTable.get("tcp.port")
local registered_range = nil  -- the range string currently added for jobscheduler

-- A kept time as the exact one, once the postdissector has learnt it.
local function exact_time(us)
    return us and (exact_us[us] or us)
end

local function reset_state()
    conns, tasks, records, frame_conn, watched, incomplete = {}, {}, {}, {}, {}, {}
    -- the started tasks that may still take a callback, in start order: by the callback
    -- port (match_callback) and by address and port (apply_command), so that neither scans
    -- every task (fields of `tasks`: the main chunk is at Lua's limit of 200 locals)
    tasks.by_port, tasks.by_target = {}, {}
    candidates = {}
    rests = {}
    exact_us = {}
    capture_end, conn_count, last_main_frame = nil, 0, nil
end
reset_state()

local function parse_ports(range)
    local out = {}
    for part in tostring(range):gmatch("[^,]+") do
        local a, b = part:match("^%s*(%d+)%s*%-%s*(%d+)%s*$")
        if a then
            for p = tonumber(a), tonumber(b) do out[p] = true end
        else
            local p = part:match("^%s*(%d+)%s*$")
            if p then out[tonumber(p)] = true end
        end
    end
    return out
end

-- Command ports: re-registered in the tcp.port table whenever the preference changes.
local function apply_port_pref()
    local range = p_cmd.prefs.ports
    if registered_range == range then return end
    if registered_range and registered_range ~= "" then
        pcall(function() tcp_port_table:remove(registered_range, p_cmd) end)
    end
    if range and range ~= "" then tcp_port_table:add(range, p_cmd) end
    registered_range = range
    cmd_ports = parse_ports(range)
end

-- Connection records: one per TCP connection, keyed by its 4-tuple (a new SYN after the
-- old connection was used starts a new record for the same 4-tuple).
local function conn_key(src, sport, dst, dport)
    local a, b = src .. "/" .. sport, dst .. "/" .. dport
    if a < b then return a .. "|" .. b end
    return b .. "|" .. a
end

local function new_conn(key, src, sport, dst, dport)
    conn_count = conn_count + 1
    local c = {
        key = key, id = conn_count, pending = {}, syn_count = 0,
        ends = { { addr = src, port = sport }, { addr = dst, port = dport } },
        seq_from = {}, acked_to = {},  -- "addr/port" -> where its sequence numbers lie
    }
    conns[key] = c
    return c
end

local function conn_of(pinfo)
    local src, dst = tostring(pinfo.src), tostring(pinfo.dst)
    local sport, dport = pinfo.src_port, pinfo.dst_port
    local key = conn_key(src, sport, dst, dport)
    local conn = conns[key]
    -- the first data after nothing but SYNs may be a later connection's: told here, as
    -- the dissectors run before the postdissector's TCP tracking (first pass)
    if conn ~= nil and conn.syns_only and not pinfo.visited then
        local seq, ack, ack_flag = TCP.seq(), TCP.ack(), TCP.ack_flag()
        if seq and ack and ack_flag
            and TCP.taken_by_data(conn, src, sport, seq.value, ack.value, ack_flag.value) then
            conn = TCP.renew(conn, key, src, sport, dst, dport)
        end
    end
    return conn or new_conn(key, src, sport, dst, dport), src, dst
end

local function is_endpoint(ep, addr, port)
    return ep ~= nil and ep.addr == addr and ep.port == port
end

local function peer_of(conn, ep)
    if is_endpoint(conn.ends[1], ep.addr, ep.port) then return conn.ends[2] end
    return conn.ends[1]
end

---------------------------------------------------------------------------------------------
-- Tasks (§7 correlation; DESIGN "What fills a row", "Matching")
---------------------------------------------------------------------------------------------

local function new_task(t)
    t.errors, t.notes = {}, {}
    tasks[#tasks + 1] = t
    return t
end

local function add_error(task, when, code, text)
    if task == nil then return end
    local parts = {}
    if code and code ~= "" then parts[#parts + 1] = code end
    if text and text ~= "" then parts[#parts + 1] = text end
    task.errors[#task.errors + 1] = { when = when, text = table.concat(parts, " ") }
end

local function remote_ip(task)
    if task.remote == nil then return nil end
    return task.remote:match("^%[(.*)%]:%d+$") or task.remote:match("^(.*):%d+$")
end

-- A task whose callback was taken by address translation, from a connection that has not
-- carried a message yet: a callback to the expected address may still take its place
-- (DESIGN "Matching": translation only when none comes to C:N in the window). Once the
-- translated one has spoken, its messages are the task's: a single pass cannot undo that.
local function waits_for_exact(t)
    local cb = t.callback
    return cb ~= nil and t.translated and not cb.data_seen
end

-- A callback connection (its first SYN or, picked up mid-stream, its first payload) to
-- controller_ip:port at `when`: the earliest-started waiting task whose window holds it,
-- exact controller address first, then the same port from the task's remote (NAT).
local function match_callback(conn, controller_ip, port, source_ip, when)
    local chosen, exact
    -- only started tasks with this callback port can match (tasks.by_port, in start
    -- order); those that never can again are dropped: a failed start, a callback taken
    -- for good (exactly, or translated and already spoken on)
    local waiting = {}
    for _, t in ipairs(tasks.by_port[port] or {}) do
        if not t.start_failed and (t.callback == nil or waits_for_exact(t)) then
            waiting[#waiting + 1] = t
        end
    end
    tasks.by_port[port] = waiting
    for pass = 1, 2 do
        for _, t in ipairs(waiting) do
            local free = t.callback == nil or (pass == 1 and waits_for_exact(t))
            if free and t.start_seen and not t.start_failed
                and t.callback_port == port and t.start_sent <= when then
                -- picked up mid-stream, its SYN came before: a live one was accepted within
                -- 60 s, so it is the task's until the port's next start (as jsdissect)
                local window_end = conn.syn and t.start_sent + CALLBACK_TIMEOUT_US or math.huge
                if t.window_end and t.window_end < window_end then window_end = t.window_end end
                local cmd_closed = t.cmd and t.cmd.closed
                if when <= window_end and (cmd_closed == nil or when <= cmd_closed)
                    and ((pass == 1 and t.expected_ip == controller_ip)
                        or (pass == 2 and remote_ip(t) == source_ip)) then
                    chosen, exact = t, pass == 1
                    break
                end
            end
        end
        if chosen then break end
    end
    if chosen == nil then return nil end
    if chosen.callback then  -- the translated one gives way, and is matched anew if it speaks
        local old = chosen.callback
        old.task, old.partial_checked, old.rematch = nil, nil, true
        chosen.translated, chosen.notes = nil, {}
    end
    chosen.callback = conn
    conn.task = chosen
    if not exact then
        chosen.translated = true
        chosen.notes[#chosen.notes + 1] = "callback to " .. endpoint_text(controller_ip, port)
            .. " instead of " .. tostring(chosen.expected_ip) .. ": address translation"
    elseif remote_ip(chosen) ~= nil and source_ip ~= remote_ip(chosen) then
        chosen.notes[#chosen.notes + 1] = "callback from " .. source_ip
            .. ", not the remote's address"
    end
    return chosen
end

-- §7.1: the start command announces the callback port. Wireshark 4.6+: a conversation
-- for controller address + port with any peer, as the FTP dissector announces its data
-- connection; older versions: the tcp.port table, cleared again in init.
local function register_callback_port(port, pinfo, controller_addr)
    watched[port] = true
    if Conversation and Conversation.find and convtypes and convtypes.TCP then
        local ok = pcall(function()
            local conv = Conversation.find(pinfo.number, convtypes.TCP, controller_addr, port,
                nil, nil, true)
            if not pcall(function() conv.dissector = p_api end) then
                conv.dissector = Dissector.get("jobscheduler_api")
            end
        end)
        if ok then return end
    end
    if not registered[port] then
        tcp_port_table:add(port, p_api)
        registered[port] = true
    end
end

---------------------------------------------------------------------------------------------
-- TCP tracking (postdissector, first pass): handshake, refusal and FIN/RST times.
-- Bare segments never reach a protocol dissector, and the first pass of `tshark -2` has
-- no tree for field extractors, so the TCP header is read from the frame's own bytes.
---------------------------------------------------------------------------------------------

local PT_TCP = 2
local SEQ_MOD = 4294967296

local function port_bytes(p)
    return string.char(math.floor(p / 256), p % 256)
end

-- The TCP header in the frame: the first place where this frame's two ports appear with
-- a plausible data offset.
local function tcp_header(raw, sport, dport)
    local pattern = port_bytes(sport) .. port_bytes(dport)
    local from = 1
    while true do
        local i = raw:find(pattern, from, true)
        if i == nil then return nil end
        if i + 19 <= #raw and raw:byte(i + 12) >= 0x50 then return i end
        from = i + 1
    end
end

local function be32(raw, i)
    local a, b, c, d = raw:byte(i, i + 3)
    return ((a * 256 + b) * 256 + c) * 256 + d
end

-- The TCP payload's length on the wire: the IP header's length less the headers (IPv4
-- with options; IPv6 with its extension headers: hop-by-hop options, routing, fragment,
-- destination options, authentication), else nil.
local function tcp_payload_len(raw, h)
    local doff = math.floor(raw:byte(h + 12) / 16) * 4
    for ihl = 5, 15 do
        local i = h - ihl * 4
        if i < 1 then break end
        if raw:byte(i) == 0x40 + ihl and raw:byte(i + 9) == 6 then
            return raw:byte(i + 2) * 256 + raw:byte(i + 3) - ihl * 4 - doff
        end
    end
    -- IPv6: the fixed header whose chain of extension headers ends at the TCP header
    for i = h - 40, 1, -8 do
        if math.floor(raw:byte(i) / 16) == 6 then
            local nxt, at = raw:byte(i + 6), i + 40
            while at < h and (nxt == 0 or nxt == 43 or nxt == 44 or nxt == 60 or nxt == 51) do
                local size = (raw:byte(at + 1) + 1) * 8       -- in 8 bytes, less one
                if nxt == 44 then
                    size = 8                                    -- fragment: fixed
                elseif nxt == 51 then
                    size = (raw:byte(at + 1) + 2) * 4           -- AH: in 4 bytes, less two
                end
                nxt, at = raw:byte(at), at + size
            end
            if nxt == 6 and at == h then
                return raw:byte(i + 4) * 256 + raw:byte(i + 5) - (h - i - 40) - doff
            end
        end
    end
    return nil
end

local function interesting_port(p)
    return cmd_ports[p] or watched[p]
end

-- A later connection on a 4-tuple whose SYN the capture lost, while the record's
-- connection looks live (its end not captured either), told on the evidence jsdissect's
-- tcp (`taken_over_by`) takes: what TCP rules out for the connection as recorded (found by
-- fuzzing jsdissect against tshark; Wireshark itself starts a new stream only at a SYN).

-- Where a segment places its sides' sequence numbers: the sender's first one (after its
-- SYN or SYN-ACK, else its first byte or FIN), the peer's while it is not placed so (the
-- latest acknowledgement of it).
function TCP.note(conn, sender, receiver, seq, ack, syn, ackf, data)
    if conn.seq_from[sender] == nil then
        if syn then
            conn.seq_from[sender] = (seq + 1) % SEQ_MOD
        elseif data then
            conn.seq_from[sender] = seq
        end
    end
    if ackf and conn.seq_from[receiver] == nil then conn.acked_to[receiver] = ack end
end

-- The side `ep` is placed, and cannot have begun at `first` (a SYN-ACK's sequence number +
-- 1, or what it acknowledges): that lies ahead of where it was placed, or further behind
-- than a window (a handshake comes before the bytes).
function TCP.began_elsewhere(conn, ep, first)
    local known = conn.seq_from[ep] or conn.acked_to[ep]
    return known ~= nil and (known - first) % SEQ_MOD > TCP.BAND
end

-- A SYN-ACK that answers another SYN than the connection's, from another initial sequence
-- number than its server's: exact where its handshake was captured (its SYN-ACK again
-- repeats both; one with the same acknowledgement and another number is SYN cookies or a
-- duplicated SYN answered twice), else both numbers where this connection's cannot be.
function TCP.answers_another_syn(conn, src, sport, dst, dport, seq, ack)
    local sender, receiver = src .. "/" .. sport, dst .. "/" .. dport
    local first = (seq + 1) % SEQ_MOD
    local before = conn.before
    if before and before[sender] == first and before[receiver] == ack then
        return false  -- the SYN-ACK of the connection before this one, again
    end
    local from_server = is_endpoint(conn.server, src, sport)
    if from_server and conn.synack_ack then
        return ack ~= conn.synack_ack and seq ~= conn.synack_seq
    end
    if from_server and conn.syn_seq then
        -- its SYN captured, not its SYN-ACK: that acknowledges the SYN and at most the
        -- bytes the SYN carried (TCP Fast Open); one short of it is this one's too
        if (ack - conn.syn_seq) % SEQ_MOD <= conn.syn_data + 1 then return false end
        return (conn.seq_from[sender] or conn.acked_to[sender]) == nil
            or TCP.began_elsewhere(conn, sender, first)
    end
    return TCP.began_elsewhere(conn, receiver, ack) and TCP.began_elsewhere(conn, sender, first)
end

-- After nothing but SYNs, data its client could not send, or a server could not
-- acknowledge, after them: far from the SYN's sequence number, which the first byte
-- (after the bytes the SYN carried) follows.
function TCP.taken_by_data(conn, src, sport, seq, ack, ackf)
    if not conn.syns_only then return false end
    local n = seq
    if not is_endpoint(conn.client, src, sport) then
        if not ackf then return false end
        n = ack
    end
    local off = (n - conn.syn_seq - 1) % SEQ_MOD
    return off > conn.syn_data + TCP.BAND and off ~= SEQ_MOD - 1
end

-- The record of a later connection on the 4-tuple; where the earlier one's sides began
-- stays known, to tell its SYN-ACK sent again.
function TCP.renew(old, key, src, sport, dst, dport)
    local conn = new_conn(key, src, sport, dst, dport)
    conn.before = old.seq_from
    return conn
end

-- Later passes find a 4-tuple's latest record: a frame before the first one dissected on
-- it (every frame, if none was) is an earlier connection's. (A record that had none: a
-- later connection's bytes that Wireshark, which keeps them in the earlier one's stream,
-- took for retransmissions.)
function TCP.earlier(conn, pinfo)
    return pinfo.visited and (conn.first_frame or math.huge) > pinfo.number
end

local function track_tcp(tvb, pinfo, now)
    local src, dst = tostring(pinfo.src), tostring(pinfo.dst)
    local sport, dport = pinfo.src_port, pinfo.dst_port
    local key = conn_key(src, sport, dst, dport)
    local conn = conns[key]
    local ports_match = interesting_port(sport) or interesting_port(dport)
    if conn == nil and not ports_match and not p_cmd.prefs.heuristic then return end
    local raw = tvb:raw(0, math.min(tvb:len(), 192))
    local h = tcp_header(raw, sport, dport)
    if h == nil then return end
    local flags = raw:byte(h + 13)
    local seq, ack = be32(raw, h + 4), be32(raw, h + 8)
    local syn, fin = band(flags, 0x02) ~= 0, band(flags, 0x01) ~= 0
    local rst, ackf = band(flags, 0x04) ~= 0, band(flags, 0x10) ~= 0
    -- the segment's payload, for the postdissector: its first byte's sequence number (a
    -- SYN's data, TCP Fast Open, follows the SYN), length on the wire, offset in the frame
    local data_seq = syn and (seq + 1) % SEQ_MOD or seq
    local payload, at = tcp_payload_len(raw, h), h - 1 + math.floor(raw:byte(h + 12) / 16) * 4
    local sender, receiver = src .. "/" .. sport, dst .. "/" .. dport
    if conn ~= nil and not (syn or rst) and (payload or 0) > 0
        and TCP.taken_by_data(conn, src, sport, seq, ack, ackf) then
        conn = TCP.renew(conn, key, src, sport, dst, dport)
    elseif conn ~= nil and syn and ackf
        and TCP.answers_another_syn(conn, src, sport, dst, dport, seq, ack) then
        conn = TCP.renew(conn, key, src, sport, dst, dport)
    end
    if syn and not ackf then
        -- (a SYN that carries data, TCP Fast Open, reached the dissector first: the same
        -- connection)
        local used = conn ~= nil and (conn.closed
            or (conn.first and conn.first_frame ~= pinfo.number))
        if conn ~= nil and ((conn.syn_seq ~= nil and conn.syn_seq ~= seq)
            or (conn.syn_seq == nil and used)) then
            conn = TCP.renew(conn, key, src, sport, dst, dport)  -- a 4-tuple used before
        end
        if conn == nil then conn = new_conn(key, src, sport, dst, dport) end
        if conn.syn == nil then
            conn.syn, conn.syn_frame, conn.syn_seq = now, pinfo.number, seq
            conn.syn_data = payload or 0
            if conn.syns_only == nil then conn.syns_only = true end  -- nothing else yet
            conn.client = { addr = src, port = sport }
            conn.server = { addr = dst, port = dport }
            if watched[dport] then
                candidates[#candidates + 1], conn.candidate = conn, true
                match_callback(conn, dst, dport, src, now)
            end
        end
        -- The same SYN captured again on another interface (tcpdump -i any on a host whose
        -- traffic crosses a VLAN sub-interface, a bond or a bridge takes each packet on
        -- each, microseconds apart) is one SYN, not a retransmission, which comes a second
        -- later at the earliest: as jsdissect's capture.without_copies, the same bytes
        -- (TCP header and payload) within 100 ms of the first copy.
        local doff = math.floor(raw:byte(h + 12) / 16) * 4
        local bytes = tvb:raw(h - 1, math.min(tvb:len() - h + 1, doff + (payload or 0)))
        local copy = bytes == conn.syn_bytes and math.abs(now - conn.syn_bytes_at) <= 100000
        if not copy then
            conn.syn_count = conn.syn_count + 1
            conn.syn_bytes, conn.syn_bytes_at = bytes, now
        end
        if not is_endpoint(conn.client, src, sport) then conn.syns_only = false end
        TCP.note(conn, sender, receiver, seq, ack, true, false, false)
        frame_conn[pinfo.number] = conn
        conn.seg_frame, conn.seg_seq = pinfo.number, data_seq
        conn.seg_len, conn.seg_at = payload, at
        if payload and payload > 0 then conn.carried = true end
        -- a SYN after the SYN-ACK: that answer had not reached the client (see below)
        if conn.synack ~= nil and not copy then
            conn.syn_after_synack = true
            conn.synack_unacked = conn.established == nil and not conn.carried
                and not conn.client_fin
        end
        return
    end
    if conn == nil then
        -- a SYN-ACK tells the sides as the SYN does (heuristics: any port, as SYNs)
        if not ports_match and not (syn and p_cmd.prefs.heuristic) then return end
        conn = new_conn(key, src, sport, dst, dport)
    end
    conn.syns_only = false
    TCP.note(conn, sender, receiver, seq, ack, syn, ackf, (payload or 0) > 0 or fin)
    frame_conn[pinfo.number] = conn
    conn.seg_frame, conn.seg_seq = pinfo.number, data_seq
    conn.seg_len, conn.seg_at = payload, at
    if payload and payload > 0 then conn.carried = true end  -- payload, of any kind
    if syn and conn.server == nil then  -- its SYN not captured: the SYN-ACK's sender accepted
        conn.client = { addr = dst, port = dport }
        conn.server = { addr = src, port = sport }
    end
    local from_server = is_endpoint(conn.server, src, sport)
    if syn and ackf then
        if from_server and conn.synack == nil and conn.refused == nil then
            conn.synack, conn.synack_seq, conn.synack_ack = now, seq, ack
            -- the SYN not captured: a SYN-ACK from an announced port tells the controller
            -- accepted a callback there (picked up at its answer, as jsdissect takes it)
            if conn.syn == nil and watched[sport] and not conn.candidate then
                candidates[#candidates + 1], conn.candidate = conn, true
                match_callback(conn, src, sport, dst, now)
            end
        end
    elseif conn.synack ~= nil and conn.established == nil and not from_server and ackf
        and (ack - (conn.synack_seq + 1)) % SEQ_MOD < SEQ_MOD / 2 then
        conn.established = now
    end
    if fin and not from_server then conn.client_fin = true end
    -- SYN-ACKs went out but the client went on sending SYNs and nothing else: none reached
    -- it, the handshake never ended (jsdissect's tcp "synack-unacked")
    conn.synack_unacked = conn.syn_after_synack and conn.established == nil
        and not conn.carried and not conn.client_fin
    -- the server's RST answers the SYN: its only answer, or one after SYN-ACKs that never
    -- reached the client (the listener went away meanwhile)
    if rst and from_server and conn.syn ~= nil and conn.refused == nil
        and ((conn.synack == nil and not conn.server_spoke) or conn.synack_unacked) then
        conn.refused, conn.refused_frame = now, pinfo.number
    end
    if from_server then conn.server_spoke = true end
    if fin and from_server then conn.server_fin = true end
    if fin or rst then  -- (the postdissector ends a callback frame it leaves unfinished)
        conn.end_frame, conn.end_rst = pinfo.number, rst
    end
    if (fin or rst) and conn.closed == nil then
        conn.closed, conn.closed_frame = now, pinfo.number
        conn.closed_by_fin = (fin and not rst) and { addr = src, port = sport } or nil
        -- a connection that never carried this protocol need not be remembered
        if conn.channel == nil and not ports_match and conns[key] == conn then
            conns[key] = nil
        end
    end
end

---------------------------------------------------------------------------------------------
-- Reassembly bookkeeping shared by both channels
---------------------------------------------------------------------------------------------

-- Where the first pass keeps each message's facts for later passes: frame, tvb (a
-- reassembled tvb has offset 0, a remainder is a sub-tvb of the frame), offset. Not the
-- tvb's length: a reassembly that ends inside a segment that also begins the next message
-- is the whole segment in the first pass, and only up to that next message in later ones.
local function message_key(pinfo, tvb, off)
    return pinfo.number .. ":" .. tvb:offset() .. ":" .. off
end

local function direction(pinfo)
    local a = tostring(pinfo.src) .. "/" .. pinfo.src_port
    local b = tostring(pinfo.dst) .. "/" .. pinfo.dst_port
    if a < b then return 1 end
    return 2
end

-- When a message's bytes were captured (DESIGN "Exact times": it was sent with the first
-- packet that carries its first byte, and complete when its last missing byte arrived, the
-- latest over its bytes of the time each was first captured; retransmitted copies change
-- nothing). TCP hands a dissector a direction's bytes in order, but bytes reassembled out
-- of order, or that a retransmission added to what it re-sent, come in a later frame than
-- the one that carried them first. So the postdissector notes, per direction, the bytes of
-- each segment not captured before and when (first pass, from the frame's own bytes), and
-- each dissector keeps the stream offset of the next byte it is to get: a reassembled tvb
-- begins there; after a tvb of the frame's own bytes (which begins where the postdissector
-- finds the segment) it is known again once the postdissector has read the segment. (One
-- table, in the place of one function: the main chunk is at Lua's limit of 200 local
-- variables.)
local Stream = { MAX_PIECES = 4096 }  -- per direction, beyond the next byte to dissect

-- The exact time of this frame for the one the first pass kept, learnt by the postdissector
-- and, in a later pass, by the dissectors before they add items (the postdissector runs
-- after them: a message that began in this frame showed the kept time, 1 µs late at worst,
-- found in review). When the kept times are exact, a double's value may be another frame's
-- exact time, and must not be mapped. `now`: the first pass.
function Stream.learn_exact(pinfo, now)
    local kept, exact = frame_us(pinfo, true), exact_frame_us()
    if now and exact == nil then exact_us.rounded = true end
    if exact_us.rounded and exact and exact ~= kept then exact_us[kept] = exact end
end

function Stream.of(conn, dir)
    conn.streams = conn.streams or {}
    local s = conn.streams[dir]
    if s == nil then
        s = { top = 0, pieces = {} }  -- pieces: { from, to, time } in offset order
        conn.streams[dir] = s
    end
    return s
end

-- A sequence number as the stream offset nearest the highest byte seen (it may wrap).
function Stream.offset(s, seq)
    local d = (seq - s.base - s.top) % SEQ_MOD
    if d >= SEQ_MOD / 2 then d = d - SEQ_MOD end
    return s.top + d
end

-- Bytes [from, to) captured at `t`: those not captured before (first copy wins).
function Stream.add(s, from, to, t)
    if s.pos and from < s.pos then from = s.pos end
    if to <= from then return end
    local pieces = s.pieces
    local last = pieces[#pieces]
    if last == nil or last[2] <= from then  -- in order: the common case
        pieces[#pieces + 1] = { from, to, t }
    else
        local out, at = {}, from
        for _, p in ipairs(pieces) do
            if p[1] > at and at < to then out[#out + 1] = { at, math.min(p[1], to), t } end
            out[#out + 1] = p
            if p[2] > at then at = p[2] end
        end
        if at < to then out[#out + 1] = { at, to, t } end
        s.pieces = out
    end
    if #s.pieces > Stream.MAX_PIECES then table.remove(s.pieces, 1) end
end

-- Bytes before the next one to dissect are not looked up again.
function Stream.forget(s)
    local pieces, n = s.pieces, 0
    while s.pos and n < #pieces and pieces[n + 1][2] <= s.pos do n = n + 1 end
    if n == 0 then return end
    local kept = {}
    for i = n + 1, #pieces do kept[#kept + 1] = pieces[i] end
    s.pieces = kept
end

-- Postdissector, first pass: a segment of the direction (`seq` of its first byte; `at`,
-- its payload's offset in the frame; `captured` and `wire` bytes of it).
function Stream.note(s, frame, seq, at, captured, wire, now)
    if s.base == nil then s.base = seq end
    local from = Stream.offset(s, seq)
    if captured < wire or from > s.top then s.lossy = true end  -- bytes not captured
    Stream.add(s, from, from + captured, now)
    if from + wire > s.top then s.top = from + wire end
    local a = s.anchor
    if a and a.frame == frame then  -- the dissector's tvb of this frame's bytes
        s.anchor = nil
        s.pos = a.left == 0 and from + wire or from + a.at - at + a.used
        Stream.forget(s)
    end
end

-- The stream offset of a tvb's first byte, when known (first pass).
function Stream.base(s, tvb)
    if tvb:offset() == 0 then return s.pos end  -- reassembled: where the last one stopped
    return nil
end

-- After a dissector took `used` bytes of a tvb (the rest comes again, reassembled).
function Stream.moved(s, tvb, base, used, frame)
    if tvb:offset() == 0 then
        s.pos = base and base + used
        Stream.forget(s)
    else
        s.pos = nil
        s.anchor = { frame = frame, at = tvb:offset(), used = used, left = tvb:len() - used }
    end
end

-- When the message at `off` of the tvb was sent: when its first byte was first captured;
-- else (not noted, or the offset unknown) a message continued from an earlier desegment
-- request began when that request was made, any other in this frame.
function Stream.sent(s, base, cont, off, now)
    if base then
        local o = base + off
        for _, p in ipairs(s.pieces) do
            if o < p[1] then break end
            if o < p[2] then return p[3] end
        end
    end
    if off == 0 and cont ~= nil then return cont.t end
    return now
end

-- When the `n` bytes at `off` of the tvb were complete: the latest first capture over them.
function Stream.done(s, base, off, n, now)
    if base == nil then return now end
    local at, to, latest = base + off, base + off + n, nil
    for _, p in ipairs(s.pieces) do
        if p[1] >= to then break end
        if p[2] > at then
            if p[1] > at then latest = math.max(latest or now, now) end  -- in this frame
            latest = math.max(latest or p[3], p[3])
            at = p[2]
        end
    end
    if at < to then latest = math.max(latest or now, now) end
    return latest
end

-- Several messages in one frame: the first sets the columns, the others append.
local function set_column(pinfo, proto_col, text)
    if tostring(pinfo.cols.protocol) == proto_col then
        pinfo.cols.info:append(" | " .. text)
    else
        pinfo.cols.protocol = proto_col
        pinfo.cols.info = text
    end
end

-- Task-level helpers filled in further down (one table: the main chunk is at Lua's limit
-- of 200 local variables).
local Task = {}

-- The task key, and once the whole file was read its status, on a message of the task.
-- `keyed`: the message carries the key itself (a close, a kill, a <process> answer).
local function add_process_id(tree, task, keyed)
    if task == nil then return end
    if task.process_id ~= nil and not keyed then
        tree:add(F.process_id, task.process_id):set_generated()
    end
    local status = Task.status(task)
    if status then tree:add(F.status, status):set_generated() end
end

-- A stand-in tree for parsing without display (heuristic probes): every call returns it.
local NULL_TREE = setmetatable({}, {
    __index = function() return function(self) return self end end,
})

---------------------------------------------------------------------------------------------
-- Command channel (§3)
---------------------------------------------------------------------------------------------

-- Text helpers (one table: the main chunk is at Lua's limit of 200 local variables).
-- Command documents and attribute values are handled as UTF-8: a document is converted
-- once, as its prolog says (§3.1, §3.2: ISO-8859-1 unless it declares UTF-8), before its
-- references are replaced, so `&#233;` and `&#8364;` come out as the UTF-8 they name.
local TEXT = { entities = { lt = "<", gt = ">", amp = "&", quot = '"', apos = "'" } }

-- A UTF-8 byte order mark: R and C parse commands and answers with the JVM's XML parser,
-- which takes one as a document's first bytes (no text: what follows is UTF-8 unless a
-- prolog names another encoding) and refuses one anywhere else (§3.1, §3.2).
TEXT.BOM = "\239\187\191"

-- A code point as UTF-8 (Lua 5.2 has no utf8 library); nil for none XML allows as text.
function TEXT.utf8_char(n)
    if n == nil or n < 0 or n > 0x10FFFF or (n >= 0xD800 and n <= 0xDFFF)
        or n ~= math.floor(n) then
        return nil
    end
    if n < 0x80 then return string.char(n) end
    if n < 0x800 then return string.char(0xC0 + math.floor(n / 64), 0x80 + n % 64) end
    if n < 0x10000 then
        return string.char(0xE0 + math.floor(n / 4096), 0x80 + math.floor(n / 64) % 64,
            0x80 + n % 64)
    end
    return string.char(0xF0 + math.floor(n / 262144), 0x80 + math.floor(n / 4096) % 64,
        0x80 + math.floor(n / 64) % 64, 0x80 + n % 64)
end

-- Whether s is well-formed UTF-8 (what Python's strict decoder takes).
function TEXT.valid_utf8(s)
    if not s:find("[\128-\255]") then return true end
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        local len, lo, hi = 1, 0x80, 0xBF
        if c < 0x80 then len = 1
        elseif c >= 0xC2 and c <= 0xDF then len = 2
        elseif c >= 0xE0 and c <= 0xEF then
            len = 3
            if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
        elseif c >= 0xF0 and c <= 0xF4 then
            len = 4
            if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
        else
            return false
        end
        for k = 1, len - 1 do
            local b = s:byte(i + k)
            if b == nil then return false end
            if k == 1 then
                if b < lo or b > hi then return false end
            elseif b < 0x80 or b > 0xBF then
                return false
            end
        end
        i = i + len
    end
    return true
end

-- A document's text as UTF-8: as sent when its prolog (or, without one naming an
-- encoding, a BOM) declares UTF-8 and it is that, else read as ISO-8859-1 (as the default
-- engine falls back). A BOM is no text.
function TEXT.document(doc)
    local bom = doc:sub(1, 3) == TEXT.BOM
    if bom then doc = doc:sub(4) end
    local enc = doc:match("^%s*<%?xml[^>]-%f[%w_]encoding%s*=%s*[\"']([%w._:%-]+)[\"']")
    enc = enc and enc:lower() or (bom and "utf-8")
    if (enc == "utf-8" or enc == "utf8" or enc == "utf_8") and TEXT.valid_utf8(doc) then
        return doc
    end
    return latin1_to_utf8(doc)
end

-- Entity and character references of UTF-8 text (XML 1.0 §4.1).
function TEXT.unescape(s)
    return (s:gsub("&(#?[xX]?%w+);", function(e)
        if TEXT.entities[e] then return TEXT.entities[e] end
        local n = e:match("^#[xX](%x+)$")
        n = n and tonumber(n, 16) or tonumber(e:match("^#(%d+)$") or "")
        return TEXT.utf8_char(n) or ("&" .. e .. ";")
    end))
end

-- An integer as the default engine reads one (§6.2, §6.4): ASCII digits with an optional
-- sign, spaces around; as its canonical decimal text (exact past 2^53), or nil.
function TEXT.integer(s)
    local sign, digits = (s or ""):match("^[ \t\r\n]*([+-]?)(%d+)[ \t\r\n]*$")
    if digits == nil then return nil end
    digits = digits:gsub("^0+", "")
    if digits == "" then return "0" end
    return (sign == "-" and "-" or "") .. digits
end

-- The number of an integer text, for a field of `bits` (signed) bits; nil past its range.
function TEXT.field_number(text, bits)
    local n = text and tonumber(text)
    if n == nil or n >= 2 ^ (bits - 1) or n < -2 ^ (bits - 1) then return nil end
    return n
end

-- §5.4 the VARTYPEs of integers (the default engine's INTEGER_VTS)
TEXT.INTEGER_VTS = { [0x10] = true, [0x11] = true, [0x02] = true, [0x12] = true, [0x03] = true,
    [0x13] = true, [0x16] = true, [0x17] = true, [0x14] = true, [0x15] = true }

-- §5.4 double text as the default engine takes it (Python's float() syntax, ASCII).
function TEXT.is_double(s)
    local body = s:match("^[+-]?(.*)$")
    local l = body:lower()
    if l == "nan" or l == "inf" or l == "infinity" then return true end
    local mant, exp = body:match("^([%d.]+)(.*)$")
    if mant == nil or not (mant:match("^%d+%.?%d*$") or mant:match("^%.%d+$")) then
        return false
    end
    return exp == "" or exp:match("^[eE][+-]?%d+$") ~= nil
end

-- Python's repr() of an ISO-8859-1 string (the default engine's decode errors quote so).
function TEXT.py_repr(s)
    local q = (s:find("'", 1, true) and not s:find('"', 1, true)) and '"' or "'"
    local named = { ["\\"] = "\\\\", ["\t"] = "\\t", ["\n"] = "\\n", ["\r"] = "\\r" }
    return q .. s:gsub("[%c\\'\"\128-\255]", function(c)
        if named[c] then return named[c] end
        if c == q then return "\\" .. c end
        local b = c:byte()
        if c == "'" or c == '"' then return c end
        if b < 0x20 or (b >= 0x7F and b <= 0xA0) or b == 0xAD then
            return string.format("\\x%02x", b)
        end
        return latin1_to_utf8(c)
    end) .. q
end

-- Wireshark's string fields and item texts end at a NUL, so a NUL in a string of the
-- callback channel is shown as ␀ (U+2400): no §5.3 string (ISO-8859-1) holds that
-- character, so jsdissect's wireshark engine can turn it back into the NUL.
TEXT.NUL_SIGN = "\226\144\128"

-- UTF-8 text as a field value or item text.
function TEXT.shown(s)
    if s == nil then return nil end
    return (s:gsub("\0", TEXT.NUL_SIGN))
end

-- A §5.3 string (ISO-8859-1, as on the wire) as a field value or item text.
function TEXT.field(s)
    if s == nil then return nil end
    return TEXT.shown(latin1_to_utf8(s))
end

-- XML 1.0 §2.11 then §3.3.3, as expat does: a literal CRLF (or lone CR) is first one LF,
-- then each literal TAB, CR, LF becomes a space; a reference (&#10;) keeps its character.
local function parse_attrs(s)
    local attrs, order = {}, {}
    for k, _, v in s:gmatch("([%w_%.:%-]+)%s*=%s*([\"'])(.-)%2") do
        attrs[k] = TEXT.unescape((v:gsub("\r\n", " "):gsub("[\t\r\n]", " ")))
        order[#order + 1] = k
    end
    return attrs, order
end

local function is_letter(b)
    return (b >= 0x41 and b <= 0x5A) or (b >= 0x61 and b <= 0x7A)
end

-- §3.1 Xml_end_finder on a string: index of the byte that completes the request, or nil.
local function request_end(s)
    local n = #s
    local non_xml = s:byte(1) ~= 0x3C
    local depth = 0
    local i = 1
    while i <= n do
        local c = s:byte(i)
        if c == 0x3C then
            local j = i + 1
            while j <= n and s:byte(j) == 0 do j = j + 1 end
            if j > n then return nil end
            local close = s:find(">", j, true)
            if close == nil then return nil end
            local d = s:byte(j)
            if d == 0x2F then
                depth = depth - 1
                if depth <= 0 then return close end
            elseif is_letter(d) then
                local k = close - 1
                while k > j and s:byte(k) == 0 do k = k - 1 end
                if s:byte(k) == 0x2F then
                    if depth == 0 then return close end
                else
                    depth = depth + 1
                end
            end
            i = close + 1
        elseif non_xml and c == 0x0A then
            return i
        else
            local nxt = s:find(non_xml and "[<\n]" or "<", i)
            if nxt == nil then return nil end
            i = nxt
        end
    end
    return nil
end

-- §3.1 Xml_end_finder that resumes where the last piece ended, as jsdissect's EndFinder:
-- a command longer than MAX_DOCUMENT is not reassembled but followed to its end, segment
-- by segment. `st`: { non_xml, depth, slash, state: "out", "lt" (after a `<`), "start",
-- "end", "special" (inside a tag) }. The index in `s`, from `i` on, of the byte that
-- completes the command, or nil.
function TEXT.end_scan(st, s, i)
    local n = #s
    while i <= n do
        if st.state == "out" then
            local j = s:find(st.non_xml and "[<\n]" or "<", i)
            if j == nil then return nil end
            if s:byte(j) == 0x0A then return j end
            st.state, i = "lt", j + 1
        elseif st.state == "lt" then
            local b = s:byte(i)
            if b == 0 then
                i = i + 1
            elseif b == 0x2F then
                st.state, i = "end", i + 1
            elseif is_letter(b) then
                st.state, st.slash, i = "start", false, i + 1
            else
                st.state = "special"  -- `<?…>`, `<!…>`: not counted; this byte may be the `>`
            end
        else
            local j = s:find(">", i, true)
            if st.state == "start" then  -- the last byte before the `>` but NULs: a `/`?
                local k = (j or n + 1) - 1
                while k >= i and s:byte(k) == 0 do k = k - 1 end
                if k >= i then st.slash = s:byte(k) == 0x2F end
            end
            if j == nil then return nil end
            local tag = st.state
            st.state = "out"
            if tag == "start" and st.slash then
                if st.depth == 0 then return j end
            elseif tag == "start" then
                st.depth = st.depth + 1
            elseif tag == "end" then
                st.depth = math.max(st.depth - 1, 0)
                if st.depth == 0 then return j end
            end
            i = j + 1
        end
    end
    return nil
end

-- §3.2/§3.4: whether an answer (without its NUL) is one whole XML document: a tag first,
-- tags that balance (quoted values may hold `>`), comments, CDATA and processing
-- instructions skipped whole, nothing after the root but blanks, comments and processing
-- instructions (XML 1.0 "Misc"). The rest of an answer whose beginning the capture lost,
-- or its head, is not. A DOCTYPE is refused, as jsdissect's own parser refuses it.
local SKIPPED = { { "<!--", "-->" }, { "<![CDATA[", "]]>" }, { "<?", "?>" } }

-- Where the markup that begins at `i` ends (its last byte), or nil when it does not end.
local function markup_end(doc, i)
    for _, pair in ipairs(SKIPPED) do
        local open, close = pair[1], pair[2]
        if doc:sub(i, i + #open - 1) == open then
            local _, stop = doc:find(close, i + #open, true)
            return stop, false
        end
    end
    local k = i + 1
    while true do
        k = doc:find("[\"'>]", k)
        if k == nil then return nil end
        if doc:byte(k) == 0x3E then return k, true end
        k = doc:find(doc:sub(k, k), k + 1, true)
        if k == nil then return nil end
        k = k + 1
    end
end

local function only_misc(rest)
    rest = rest:gsub("<!%-%-.-%-%->", ""):gsub("<%?.-%?>", "")
    return rest:find("[^ \t\r\n]") == nil
end

local function whole_document(doc)
    local i = doc:find("[^ \t\r\n]", doc:sub(1, 3) == TEXT.BOM and 4 or 1)
    if i == nil or doc:byte(i) ~= 0x3C then return false end
    local depth, seen = 0, false
    while true do
        if doc:sub(i, i + 8) == "<!DOCTYPE" then return false end
        local k, is_tag = markup_end(doc, i)
        if k == nil then return false end
        if is_tag then
            local first = doc:byte(i + 1)
            if first == 0x2F then
                depth = depth - 1
                if depth < 0 then return false end
            else
                seen = true
                if doc:byte(k - 1) ~= 0x2F then depth = depth + 1 end
            end
        end
        if depth == 0 and seen then return only_misc(doc:sub(k + 1)) end
        i = doc:find("<", k + 1, true)
        if i == nil then return false end
    end
end

-- Start tags of a document in order: { name, attrs, order, pos }, attribute values in
-- UTF-8 (TEXT.document).
local function elements(doc, limit)
    doc = TEXT.document(doc)
    local out = {}
    local pos = 1
    while #out < limit do
        local lt = doc:find("<", pos, true)
        if lt == nil then break end
        local gt = doc:find(">", lt, true)
        if gt == nil then break end
        local name, rest = doc:sub(lt + 1, gt - 1):match("^([%a_][^%s/>]*)(.*)$")
        if name then
            local attrs, order = parse_attrs(rest)
            out[#out + 1] = { name = name, attrs = attrs, order = order, pos = lt }
        end
        pos = gt + 1
    end
    return out
end

-- The command element: §3.4 wrappers <spooler><command>…</command></spooler> and
-- <commands> hold the real command.
local function command_element(doc)
    -- §3.1: a command without any `<` (`show_state`) is taken as `<show_state/>`
    local plain = not doc:find("<", 1, true) and doc:match("^[%s%z]*([%a_][%w_.:-]*)[%s%z]*$")
    if plain then return { name = plain, attrs = {}, order = {} } end
    local els = elements(doc, 4)
    local i = 1
    while els[i] and (els[i].name == "spooler" or els[i].name == "command"
        or els[i].name == "commands") and els[i + 1] do
        i = i + 1
    end
    return els[i]
end

-- §3.4: <spooler><answer time>RESULT</answer></spooler>; an ERROR element wins.
local function answer_parts(doc)
    local result = { attrs = {}, order = {} }
    local els = elements(doc, 64)
    local answer_at
    for i, el in ipairs(els) do
        if el.name == "answer" and answer_at == nil then
            answer_at = i
            result.time = el.attrs.time
        end
        if el.name == "ERROR" and result.error == nil then result.error = el end
    end
    local first = els[1]
    if answer_at then first = els[answer_at + 1] or els[answer_at] end
    if first then
        result.name, result.attrs, result.order = first.name, first.attrs, first.order
    end
    return result
end

local START = "remote_scheduler.start_remote_task"
local KILL = "remote_scheduler.remote_task.kill"
local CLOSE = "remote_scheduler.remote_task.close"

local function may_still_come(since)
    return capture_end == nil or capture_end < since + CALLBACK_TIMEOUT_US
end

-- DESIGN Status 3: the callback SYN was retransmitted, or 60 s passed, with no sign of an
-- answer. A SYN-ACK the capture lost is no missing answer: data in either direction, or a
-- FIN from the controller, means the connection was accepted. A single SYN the capture
-- ended less than 60 s after may still be answered: the later rules decide.
local function unanswered(cb)
    if cb.syn == nil or cb.data_seen or cb.server_fin then return false end
    -- a SYN-ACK the client went on sending SYNs after never reached it: no answer
    if cb.synack ~= nil and not cb.synack_unacked then return false end
    return cb.syn_count > 1 or not may_still_come(cb.syn)
end

-- Statuses that say no callback connection ever came (DESIGN Status 1 and 4).
local NO_CALLBACK = { ["start-failed"] = true, ["callback-missing"] = true }

-- DESIGN "Status": the first rule that applies.
local status_of  -- below

-- A task's status for the tree (found in review: no filter reached it): known in a later
-- pass only, when the whole file was read (tasks.whole, set by the dissectors); kept until
-- the capture grows (the GUI re-dissects a packet while a live capture goes on).
function Task.status(t)
    if not tasks.whole then return nil end
    if t.status == nil or t.status_at ~= capture_end then
        t.status, t.status_at = status_of(t), capture_end
    end
    return t.status
end

status_of = function(t)
    local cb = t.callback
    if t.start_failed then return "start-failed" end
    if cb and cb.refused then return "callback-refused" end
    if cb and unanswered(cb) then return "callback-unanswered" end
    if t.start_seen and cb == nil then
        -- Status 4: the start was answered and 60 s passed without a callback SYN, or the
        -- command connection ended without one
        if (t.cmd and t.cmd.closed)
            or (t.start_answered ~= nil and not may_still_come(t.start_sent)) then
            return "callback-missing"
        end
    end
    if t.killed then return "killed" end
    -- A FIN from the side that sent the ending answer follows the answer in its stream:
    -- captured first, the answer was retransmitted, and the end was normal.
    local function ended_before(conn, normal_end)
        if conn == nil or conn.closed == nil then return false end
        if normal_end == nil or conn.closed >= normal_end then return normal_end == nil end
        local fin, controller = conn.closed_by_fin, conn.api and conn.api.controller
        if fin == nil then return true end
        if conn.cmd then return not is_endpoint(conn.cmd.server, fin.addr, fin.port) end
        return controller == nil or is_endpoint(controller, fin.addr, fin.port)
    end
    if ended_before(cb, t.release_answered) or ended_before(t.cmd, t.close_answered) then
        return "aborted"
    end
    if not t.start_seen then return "partial" end
    if t.close_answered then return "completed" end
    return "running"
end

local function cmd_state(conn)
    if conn.cmd == nil then
        conn.cmd = { queue = {}, tasks = {} }
        conn.channel = "cmd"
    end
    return conn.cmd
end

local function current_task(conn)
    if conn.cmd then return conn.cmd.tasks[#conn.cmd.tasks] end
    return conn.task
end

-- The task a close or kill of `process_id` ends (§3.8): the latest with that process id,
-- else the latest whose id is unknown because its start answer was not captured (a task
-- whose start failed, or that has another id, is not it), as jsdissect's correlate.
local function task_for_process(cs, process_id)
    if process_id == nil then return cs.tasks[#cs.tasks] end
    for i = #cs.tasks, 1, -1 do
        if cs.tasks[i].process_id == process_id then return cs.tasks[i] end
    end
    for i = #cs.tasks, 1, -1 do
        local t = cs.tasks[i]
        if t.process_id == nil and t.start_answered == nil then return t end
    end
    return nil
end

local function new_cmd_task(conn, client_addr, client_port)
    local cs = cmd_state(conn)
    local t = new_task({
        controller = client_addr,
        remote = endpoint_text(cs.server.addr, cs.server.port),
        cmd = conn,
        cmd_port = client_port,
    })
    cs.tasks[#cs.tasks + 1] = t
    return t
end

-- §3.6.3 kill='yes' as the default engine reads it (blanks around the value ignored)
local function truthy(v)
    v = (v or ""):match("^%s*(.-)%s*$"):lower()
    return v == "yes" or v == "true" or v == "1"
end

-- First-pass effects of one command; returns the record later passes use.
-- §3.1 one command at a time: the controller sends a command only once the previous
-- one was answered, so a command still open when another comes had an answer the capture
-- lost; and no byte after a command is the rest of an earlier answer.
-- Commands wait for their answers in order, oldest first: more than one only when the
-- capture lost an answer or has it later (§3.1: C sends after the previous answer), so
-- a few are kept (as jsdissect's command decoder, MAX_PENDING).
local function open_command(cs, rec)
    if #cs.queue >= 16 then table.remove(cs.queue, 1) end
    cs.queue[#cs.queue + 1] = rec
    cs.lost = false
    return rec
end

local function apply_command(conn, pinfo, el, sent, src, sport)
    local cs = cmd_state(conn)
    local name = el and el.name
    local rec = { kind = 1, frame = pinfo.number, t = sent, name = name }
    if name == START then
        local t = new_cmd_task(conn, src, sport)
        t.start_seen, t.start_sent, t.start_frame = true, sent, pinfo.number
        -- ASCII digits only, as the default engine reads a number (tonumber takes "0x10")
        t.callback_port = tonumber((el.attrs.tcp_port or ""):match("^%s*(%d+)%s*$") or "")
        t.kind = el.attrs.kind == "process" and "shell" or "api"
        t.expected_ip = el.attrs.ip_address or src
        -- a later start for the same controller port ends earlier windows (§7.2): those of
        -- the started tasks to that address and port still without a callback (a failed
        -- start's window counts for nothing)
        local target = tostring(t.expected_ip) .. "|" .. tostring(t.callback_port)
        local open = {}
        for _, other in ipairs(tasks.by_target[target] or {}) do
            if other.callback == nil and not other.start_failed then
                if other.window_end == nil or other.window_end > sent then
                    other.window_end = sent
                end
                open[#open + 1] = other
            end
        end
        open[#open + 1] = t
        tasks.by_target[target] = open
        if t.callback_port then
            tasks.by_port[t.callback_port] = tasks.by_port[t.callback_port] or {}
            table.insert(tasks.by_port[t.callback_port], t)
        end
        if t.callback_port then
            local addr = pinfo.src
            if el.attrs.ip_address then
                local ok, a = pcall(Address.ip, el.attrs.ip_address)
                if ok and a then addr = a end
            end
            register_callback_port(t.callback_port, pinfo, addr)
        end
        rec.task = t
    elseif name == CLOSE or name == KILL then
        local t = task_for_process(cs, el.attrs.process_id) or new_cmd_task(conn, src, sport)
        t.process_id = t.process_id or el.attrs.process_id
        if name == CLOSE then
            if t.close_sent == nil then t.close_sent = sent end
            if truthy(el.attrs.kill) then t.killed = true end
        else
            t.killed = true
        end
        rec.task = t
    else
        rec.task = cs.tasks[#cs.tasks]
    end
    return open_command(cs, rec)
end

-- A command the capture did not get whole (cut by the snaplen, or its rest lost): the
-- remote still got it and answers it, so it takes the place of the open command; what it
-- was is unknown, so its answer changes no task.
local function lose_command(conn, frame, sent)
    local cs = cmd_state(conn)
    local rec = { kind = 1, frame = frame, t = sent, lost = true,
        task = cs.tasks[#cs.tasks] }
    return open_command(cs, rec)
end

-- An answer the capture did not get whole (cut by the snaplen, bytes missing, or not a
-- whole document): it answered the open command, whose times stay unknown (DESIGN "Exact
-- times": an answer is complete when its last byte arrived). `cs.lost` stays set while
-- its rest may still follow: bytes up to the next NUL that do not begin like an answer
-- (§3.4 `<?xml`) belong to it, not to the next command's answer.
local function lose_answer(conn, frame, rest_may_follow)
    local cs = cmd_state(conn)
    local req = table.remove(cs.queue, 1)
    cs.lost = rest_may_follow
    -- its first rest tells the loss too: TCP may never show the segment the answer began in
    cs.rest_untold = rest_may_follow
    return { kind = 2, frame = frame, lost = true, request = req,
        task = req and req.task or cs.tasks[#cs.tasks] }
end

-- First-pass effects of one answer: pairs with the open command (§3.1: one command at a
-- time).
local function apply_cmd_answer(conn, pinfo, parts, began, done)
    local cs = cmd_state(conn)
    local rec = { kind = 2, frame = pinfo.number, t = done, began = began }
    local req = table.remove(cs.queue, 1)
    rec.request = req
    rec.task = req and req.task or cs.tasks[#cs.tasks]
    local command = req and req.name
    if req then req.response = rec end
    if (req == nil or req.lost) and not parts.error and parts.name == "process" then
        -- only a start is answered with a <process> (§3.6.1): the capture began between
        -- the start and its answer, or did not get the start whole; a partial row with
        -- what it tells (as correlate)
        rec.task, command = new_cmd_task(conn, tostring(pinfo.dst), pinfo.dst_port), START
    elseif req == nil or req.lost then
        return rec  -- what it answers is unknown: it changes no task (as correlate)
    end
    local t = rec.task
    if t == nil or (req and not req.lost and req.task == nil) then return rec end
    if parts.error then add_error(t, done, parts.error.attrs.code, parts.error.attrs.text) end
    if command == START then
        t.start_answered = done
        if parts.error then
            t.start_failed = true
        elseif parts.name == "process" then
            t.process_id = parts.attrs.process_id
            -- the digits as sent (written as they are: a pid past 2^53 stays exact)
            t.pid = (parts.attrs.pid or ""):match("^%s*(%d+)%s*$")
        end
    elseif command == CLOSE then
        t.close_answered = done
    end
    return rec
end

local function add_attrs(tree, range, order, attrs)
    for _, k in ipairs(order) do
        tree:add(F.attribute, range, k .. "=" .. attrs[k]):set_generated()
    end
end

local function add_cmd_links(tree, rec)
    if rec == nil then return end
    local began = rec.kind == 1 and rec.t or rec.began
    if began then tree:add(F.first_byte, us_nstime(exact_time(began))):set_generated() end
    if rec.kind == 1 and rec.response then
        tree:add(F.response_in, rec.response.frame):set_generated()
    elseif rec.kind == 2 and rec.request then
        tree:add(F.request_in, rec.request.frame):set_generated()
        tree:add(F.time, us_nstime(rec.t - rec.request.t)):set_generated()
    end
end

-- What the first pass learnt about the task, shown on its start command: the callback
-- connection and how it went (only known once the whole file was read).
local function add_start_facts(item, task, pinfo)
    local cb = task.callback
    if cb then
        item:add(F.callback_in, cb.syn_frame or cb.first_frame):set_generated()
    end
    if task.begin_answer_frame then
        item:add(F.started_in, task.begin_answer_frame):set_generated()
    end
    if not pinfo.visited then return end
    local status = status_of(task)
    local port = tostring(task.callback_port)
    if status == "callback-refused" then
        item:add_proto_expert_info(E.refused, "Callback SYN to port " .. port
            .. " refused (RST in frame " .. cb.refused_frame .. ")")
    elseif status == "callback-unanswered" then
        item:add_proto_expert_info(E.unanswered, "Callback SYN to port " .. port .. " sent "
            .. cb.syn_count .. " time(s), never answered")
    elseif status == "callback-missing" then
        -- what the capture shows: the 60 s, or the command connection's end before them
        local ended = task.cmd and task.cmd.closed
        local within = (ended and ended < task.start_sent + CALLBACK_TIMEOUT_US)
            and " before the command connection ended (frame " .. task.cmd.closed_frame .. ")"
            or " within 60 s"
        item:add_proto_expert_info(E.missing, "No callback connection to port " .. port .. within)
    end
end

-- One XML command (client → server); returns its Info text.
local function dissect_command(tvb, off, doc, pinfo, tree, rec)
    local range = tvb(off, #doc)
    local item = tree:add(p_cmd, range)
    item:add(F.message, 1):set_generated()
    item:add(F.document, range, TEXT.document(doc))
    local el = command_element(doc)
    if el == nil then
        item:add_proto_expert_info(E.cmd_malformed, "No XML element in the command")
        return "malformed command"
    end
    item:add(F.command, range, el.name)
    local a = el.attrs
    local info = el.name:gsub("^remote_scheduler%.", "")
    if el.name == START then
        if a.tcp_port then
            item:add(F.tcp_port, range, tonumber(a.tcp_port:match("^%s*(%d+)%s*$") or "") or 0)
        end
        if a.kind then item:add(F.kind, range, a.kind) end
        if a.java_options then item:add(F.java_options, range, a.java_options) end
        if a.java_classpath then item:add(F.java_classpath, range, a.java_classpath) end
        if a.ip_address then item:add(F.ip_address, range, a.ip_address) end
        info = info .. " tcp_port=" .. tostring(a.tcp_port)
            .. (a.kind and (" kind=" .. a.kind) or "")
    elseif el.name == CLOSE or el.name == KILL then
        if a.process_id then item:add(F.process_id, range, a.process_id) end
        if el.name == CLOSE then
            item:add(F.close, true):set_generated()
            -- only on a close that kills: `-Y jobscheduler.kill` finds the kills
            if truthy(a.kill) then item:add(F.kill, true):set_generated() end
            info = info .. " process_id=" .. tostring(a.process_id)
                .. (a.kill and (" kill=" .. a.kill) or "")
        else
            item:add(F.kill, true):set_generated()
            if a.signal then item:add(F.signal, range, a.signal) end
            info = info .. " process_id=" .. tostring(a.process_id)
                .. " signal=" .. tostring(a.signal)
        end
    else
        add_attrs(item, range, el.order, a)
    end
    local task = rec and rec.task
    add_process_id(item, task, el.name == CLOSE or el.name == KILL)
    if task and el.name == START then add_start_facts(item, task, pinfo) end
    add_cmd_links(item, rec)
    return info
end

-- One answer (server → client; `len` includes the NUL); returns its Info text.
local function dissect_answer(tvb, off, doc, len, pinfo, tree, rec)
    local range = tvb(off, len)
    local item = tree:add(p_cmd, range)
    item:add(F.message, 2):set_generated()
    if #doc > 0 then item:add(F.document, tvb(off, #doc), TEXT.document(doc)) end
    local parts = answer_parts(doc)
    local info = "answer"
    if parts.time then
        local ts = parse_answer_time(parts.time)
        if ts then item:add(F.answer_time, range, ts) end
    end
    if parts.error then
        local a = parts.error.attrs
        item:add(F.result, range, "ERROR")
        if a.code then item:add(F.error_code, range, a.code) end
        if a.text then item:add(F.error_text, range, a.text) end
        if a.class then item:add(F.error_class, range, a.class) end
        if a.time then item:add(F.error_time, range, a.time) end
        if a.source then item:add(F.error_source, range, a.source) end
        item:add_proto_expert_info(E.cmd_error, "ERROR " .. tostring(a.code) .. " "
            .. tostring(a.text))
        info = "answer ERROR " .. tostring(a.code)
    elseif parts.name then
        item:add(F.result, range, parts.name)
        info = "answer " .. parts.name
        if parts.name == "process" then
            if parts.attrs.process_id then
                item:add(F.process_id, range, parts.attrs.process_id)
                info = info .. " process_id=" .. parts.attrs.process_id
            end
            if parts.attrs.pid then
                -- ASCII digits, as the default engine reads them (none: no number, no field)
                local pid = TEXT.uint64(parts.attrs.pid:match("^[ \t\r\n]*(%d+)[ \t\r\n]*$"))
                if pid then item:add(F.pid, range, pid) end
                info = info .. " pid=" .. parts.attrs.pid
            end
        else
            add_attrs(item, range, parts.order, parts.attrs)
        end
    else
        item:add_proto_expert_info(E.cmd_malformed, "No XML element in the answer")
    end
    local task = rec and rec.task
    add_process_id(item, task, parts.name == "process")
    if rec and rec.request == nil then item:add_proto_expert_info(E.unpaired) end
    if task and task.begin_answer_frame and rec.request and rec.request.name == START then
        item:add(F.started_in, task.begin_answer_frame):set_generated()
    end
    add_cmd_links(item, rec)
    return info
end

-- An answer not completely captured (`why`), or the rest of one (`rec.rest`); returns
-- its Info text.
local function dissect_lost_answer(tvb, off, len, pinfo, tree, rec, why)
    local range = tvb(off, len)
    local item = tree:add(p_cmd, range)
    if rec.rest and not rec.shows_loss then
        -- no message of its own, and no expert: the lost answer and its first rest have them
        -- (found in review: an answer in 7-byte segments, one lost, made 16 errors)
        item:add(F.segment, range)
        add_process_id(item, rec.task)
        item:set_text("JobScheduler Remote Execution [rest of an answer not completely"
            .. " captured]")
        return "[rest of an answer]"
    elseif rec.rest then
        -- the first rest after the loss: told here too, as TCP may never have shown the
        -- segment the answer began in (held for a reassembly that never completed)
        item:add(F.message, 2):set_generated()
        item:add(F.segment, range)
        add_process_id(item, rec.task)
        item:set_text("JobScheduler Remote Execution [rest of an answer]")
        item:add_proto_expert_info(E.cmd_truncated,
            "Rest of an answer not completely captured (not paired with a command)")
        return "[rest of an answer]"
    end
    item:add(F.message, 2):set_generated()
    item:add(F.segment, range)
    add_process_id(item, rec.task)
    item:add_proto_expert_info(E.cmd_truncated, why)
    if rec.request then
        item:add(F.request_in, rec.request.frame):set_generated()
    else
        item:add_proto_expert_info(E.unpaired)
    end
    return "answer not completely captured"
end

-- The beginning of every answer (§3.4, §12), a BOM before it being the document's own;
-- a shorter fragment that may become it counts.
local function begins_like_answer(raw, off)
    local bom = raw:sub(off + 1, off + 3)
    if bom == TEXT.BOM:sub(1, #bom) then off = off + #bom end
    local head = raw:sub(off + 1, off + 5)
    return head == ("<?xml"):sub(1, #head)
end

local IDLE = "^[ \0\r\n\t]+"

-- Which side is the remote scheduler (the command channel's server).
local function cmd_server(conn, tvb, src, sport, dst, dport)
    if conn.server then return conn.server end
    local to_cmd, from_cmd = cmd_ports[dport], cmd_ports[sport]
    if to_cmd and not from_cmd then return { addr = dst, port = dport } end
    if from_cmd and not to_cmd then return { addr = src, port = sport } end
    local first = tvb:raw(0, 1)
    if first == "<" or first == " " then return { addr = dst, port = dport } end
    return { addr = src, port = sport }
end

-- Whether this server frame's TCP payload begins past the end of the last one seen from
-- the server (first pass; the postdissector notes each end), or past its first byte when
-- none was: bytes were not captured.
local function bytes_missing_before(conn, dir)
    local last = conn.next_seq and conn.next_seq[dir]
    if last == nil and conn.synack_seq then last = (conn.synack_seq + 1) % SEQ_MOD end
    local fi = TCP.seq()
    if last == nil or fi == nil then return false end
    local ahead = (fi.value - last) % SEQ_MOD
    return ahead > 0 and ahead < SEQ_MOD / 2
end

local function dissect_cmd(tvb, pinfo, tree)
    local len = tvb:len()
    if len == 0 then return 0 end
    local conn, src, dst = conn_of(pinfo)
    if TCP.earlier(conn, pinfo) then return 0 end
    last_main_frame = pinfo.number
    local first_pass = not pinfo.visited
    if not first_pass then Stream.learn_exact(pinfo) tasks.whole = true end
    local cs = cmd_state(conn)
    cs.server = cs.server or cmd_server(conn, tvb, src, pinfo.src_port, dst, pinfo.dst_port)
    local from_client = not is_endpoint(cs.server, src, pinfo.src_port)
    if cs.foreign == nil and first_pass and from_client then
        -- §3.3: a connection whose first request begins with A-Z is HTTP (the web interface
        -- on the scheduler's port): Wireshark's own HTTP dissector shows it, not this one
        -- (the handshake seen and no client byte before this frame: its first request).
        -- Nor one no XML document, command name or Ctrl-D begins with (after blanks and a
        -- UTF-8 BOM), which R would refuse: another protocol on the port (a TLS client, a
        -- scanner's probe), left to Wireshark, as jsdissect leaves it undecoded.
        local dir = direction(pinfo)
        local at_start = conn.syn_seq ~= nil and not (conn.next_seq and conn.next_seq[dir])
        local head = tvb:raw(0, math.min(len, 64)):gsub("^[ \t\r\n%z]*", "")
        if head:sub(1, 3) == TEXT.BOM then head = head:sub(4):gsub("^[ \t\r\n%z]*", "") end
        local first = head:sub(1, 1)
        cs.foreign = at_start and (tvb:raw(0, math.min(len, 16)):match("^[\r\n]*[A-Z]") ~= nil
            or (first ~= "" and not first:match("^[<%a\4]$"))) or false
    end
    if cs.foreign then return 0 end
    local now = frame_us(pinfo)
    local dir = direction(pinfo)
    local cont, stream, base
    if first_pass then
        stream = Stream.of(conn, dir)
        base = Stream.base(stream, tvb)
        -- one command at a time (§3.1): when the peer speaks, a document still pending in
        -- the other direction was complete on the wire but not in the capture
        local other = conn.pending[3 - dir]
        conn.pending[3 - dir] = nil
        if other and from_client then
            records[other.key] = lose_answer(conn, other.frame, false)
        elseif other then
            records[other.key] = lose_command(conn, other.frame, other.t)
        end
        cont = conn.pending[dir]
        conn.pending[dir] = nil
        -- R sends nothing but answers (§3.7): server bytes not captured while a command is
        -- open and no answer has begun were its answer (or its start). The command is
        -- closed unanswered, else it would take the answer to the next one, lost too.
        if not from_client and cont == nil and not cs.lost and cs.queue[1] ~= nil
            and bytes_missing_before(conn, dir) then
            table.remove(cs.queue, 1)
        end
        -- TCP hands on a segment alone, not reassembled with the pending document (a tvb
        -- of the frame, offset > 0), when bytes between them were not captured: that
        -- document is lost; for an answer, these bytes may be its rest
        if cont and tvb:offset() ~= 0 then
            if from_client then
                records[cont.key] = lose_command(conn, cont.frame, cont.t)
            else
                records[cont.key] = lose_answer(conn, cont.frame, true)
            end
            cont = nil
        end
        frame_conn[pinfo.number] = conn
        if conn.first == nil then conn.first, conn.first_frame = now, pinfo.number end
    end
    local raw = tvb:raw()
    local off = 0
    while off < len do
        local key = message_key(pinfo, tvb, off)
        local rec = records[key]
        if first_pass and rec == nil and from_client and cs.oversize then
            -- the rest of a command longer than MAX_DOCUMENT, up to its end
            local stop = TEXT.end_scan(cs.oversize, raw, off + 1)
            if stop then cs.oversize = nil end
            rec = { kind = 1, oversize_rest = true, used = (stop or len) - off,
                frame = pinfo.number, task = cs.tasks[#cs.tasks] }
            records[key] = rec
        end
        if rec and rec.oversize_rest then
            local item = tree:add(p_cmd, tvb(off, rec.used))
            item:add(F.segment, tvb(off, rec.used))
            item:set_text("JobScheduler Remote Execution [rest of a command larger than "
                .. MAX_DOCUMENT .. " bytes]")
            add_process_id(item, rec.task)
            set_column(pinfo, "JobScheduler", "[rest of a command too long]")
            off = off + rec.used
            rec = nil
            key = message_key(pinfo, tvb, off)
            if off < len then rec = records[key] end
        end
        if off >= len then break end
        if first_pass and rec == nil and not from_client and cs.lost then
            -- after an answer not completely captured: its rest, up to the NUL, unless
            -- the bytes begin like an answer (the loss took that answer's end)
            local blank = raw:match(IDLE, off + 1)
            local at = off + (blank and #blank or 0)
            if at < len and begins_like_answer(raw, at) then
                cs.lost = false
            elseif at < len then
                rec = { kind = 2, rest = true, frame = pinfo.number, task = cs.tasks[#cs.tasks],
                    shows_loss = cs.rest_untold }
                cs.rest_untold = nil
                records[key] = rec
            end
        end
        local idle = not (rec and rec.rest) and raw:match(IDLE, off + 1)
        if idle then
            -- §3.7 keep-alive spaces before a command (answers: padding NULs); other
            -- blanks (a CRLF before a command) are no keep-alive, as for the default engine
            local item = tree:add(p_cmd, tvb(off, #idle))
            local spaces = from_client and select(2, idle:gsub(" ", " ")) or 0
            if spaces > 0 then
                item:add(F.message, 3):set_generated()
                item:add(F.keepalive, tvb(off, #idle), spaces)
                set_column(pinfo, "JobScheduler", "keep-alive (" .. spaces .. " space(s))")
            else
                set_column(pinfo, "JobScheduler", "padding")
            end
            add_process_id(item, cs.tasks[#cs.tasks])
            off = off + #idle
        else
            local doc_len, used
            if from_client then
                doc_len = request_end(raw:sub(off + 1))
                used = doc_len
            else
                local nul = raw:find("\0", off + 1, true)
                if nul then doc_len, used = nul - off - 1, nul - off end
            end
            if rec and rec.rest then
                -- the rest of a lost answer, up to its NUL (or all there is here)
                if first_pass and used then cs.lost = false end
                used = used or len - off
                set_column(pinfo, "JobScheduler",
                    dissect_lost_answer(tvb, off, used, pinfo, tree, rec))
            elseif doc_len == nil then
                local cut = len - off > MAX_DOCUMENT or tvb:reported_len() > len
                    or not pinfo.can_desegment or pinfo.can_desegment == 0
                if first_pass and rec == nil and cut then
                    if from_client then
                        rec = lose_command(conn, pinfo.number,
                            Stream.sent(stream, base, cont, off, now))
                        if len - off > MAX_DOCUMENT and tvb:reported_len() == len then
                            -- too long to hold, but whole: followed to its end, where the
                            -- next command begins (as jsdissect's command decoder)
                            rec.oversize = true
                            cs.oversize = { non_xml = raw:byte(off + 1) ~= 0x3C, depth = 0,
                                state = "out" }
                            if TEXT.end_scan(cs.oversize, raw, off + 1) then cs.oversize = nil end
                        end
                    else
                        rec = lose_answer(conn, pinfo.number, true)
                    end
                    records[key] = rec
                end
                if rec and rec.lost and not from_client then
                    -- cut here, or waiting for bytes that were never captured
                    set_column(pinfo, "JobScheduler", dissect_lost_answer(tvb, off, len - off,
                        pinfo, tree, rec, "Answer not completely captured"))
                else
                    local item = tree:add(p_cmd, tvb(off))
                    item:add(F.segment, tvb(off))
                    add_process_id(item, cs.tasks[#cs.tasks])
                    if rec and rec.oversize then
                        item:add_proto_expert_info(E.cmd_malformed,
                            "Command larger than " .. MAX_DOCUMENT .. " bytes")
                        set_column(pinfo, "JobScheduler", "command too long")
                    elseif rec and rec.lost then
                        item:add_proto_expert_info(E.cmd_truncated,
                            "Command not completely captured")
                        set_column(pinfo, "JobScheduler", "incomplete command")
                    else
                        item:set_text("JobScheduler Remote Execution [segment of a document]")
                        set_column(pinfo, "JobScheduler", "[segment of a document]")
                    end
                end
                if not cut then
                    if first_pass then
                        conn.pending[dir] = { t = Stream.sent(stream, base, cont, off, now),
                            key = key, frame = pinfo.number }
                    end
                    pinfo.desegment_offset = off
                    pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
                end
                if first_pass then
                    Stream.moved(stream, tvb, base, cut and len or off, pinfo.number)
                end
                return len
            else
                local doc = raw:sub(off + 1, off + doc_len)
                if first_pass and rec == nil then
                    local refused = used > MAX_DOCUMENT
                        and ((from_client and "Command" or "Answer") .. " larger than "
                            .. MAX_DOCUMENT .. " bytes")
                        or (from_client and TEXT.XML.lead_problem(doc))
                        or TEXT.XML.decl_problem(doc)
                    if refused then  -- as jsdissect: a decode error, it tells nothing
                        if from_client then
                            rec = lose_command(conn, pinfo.number,
                                Stream.sent(stream, base, cont, off, now))
                        else
                            rec = lose_answer(conn, pinfo.number, false)
                        end
                        rec.refused = refused
                    elseif from_client then
                        rec = apply_command(conn, pinfo, command_element(doc),
                            Stream.sent(stream, base, cont, off, now), src, pinfo.src_port)
                    elseif whole_document(doc) then
                        rec = apply_cmd_answer(conn, pinfo, answer_parts(doc),
                            Stream.sent(stream, base, cont, off, now),
                            Stream.done(stream, base, off, used, now))
                    else
                        rec = lose_answer(conn, pinfo.number, false)
                    end
                    records[key] = rec
                end
                local info
                if rec and rec.refused and from_client then
                    local item = tree:add(p_cmd, tvb(off, used))
                    item:add(F.segment, tvb(off, used))
                    add_process_id(item, rec.task)
                    item:add_proto_expert_info(E.cmd_malformed, rec.refused)
                    info = "malformed command"
                elseif from_client then
                    info = dissect_command(tvb, off, doc, pinfo, tree, rec)
                elseif rec and rec.lost then
                    info = dissect_lost_answer(tvb, off, used, pinfo, tree, rec, rec.refused
                        or "Not a whole answer document (bytes not captured?)")
                else
                    info = dissect_answer(tvb, off, doc, used, pinfo, tree, rec)
                end
                set_column(pinfo, "JobScheduler", info)
            end
            off = off + used
        end
    end
    if first_pass then Stream.moved(stream, tvb, base, len, pinfo.number) end
    return len
end

p_cmd.dissector = dissect_cmd

---------------------------------------------------------------------------------------------
-- Callback channel (§5, §6)
---------------------------------------------------------------------------------------------

-- Appendix A: DISPIDs of the Unix C++ method tables, by class.
local DISPIDS = {
    Com_log = {
        [0] = "info", "debug9", "debug8", "debug7", "debug6", "debug5", "debug4", "debug3",
        "debug2", "debug1", "debug", "msg", "warn", "error", "log", "mail", "mail_on_error",
        "mail_on_success", "mail_on_process", "level", "filename", "collect_within",
        "collect_max", "mail_it", "java_class_name", "last_error_line", "last",
        "mail_on_warning", "Start_new_file", "Log_file", "New_filename",
    },
    Com_task = {
        [2] = "error", [3] = "job", [4] = "params", [5] = "result",
        [6] = "wait_until_terminated", [7] = "repeat", [8] = "end", [9] = "history_field",
        [10] = "id", [11] = "delay_spooler_process", [13] = "order", [14] = "java_class_name",
        [15] = "changed_directories", [16] = "add_pid", [17] = "remove_pid",
        [18] = "stderr_text", [19] = "stdout_text", [20] = "Create_subprocess",
        [21] = "Add_subprocess", [22] = "Priority_class", [23] = "Step_count",
        [24] = "Stderr_path", [25] = "Stdout_path", [26] = "Set_error_code_and_text",
        [27] = "Web_service", [28] = "Web_service_or_null", [29] = "Priority",
        [30] = "Exit_code", [31] = "Trigger_files", [32] = "Try_hold_lock",
        [33] = "Try_hold_lock_non_exclusive", [34] = "Call_me_again_when_locks_available",
        [35] = "Params_xml", [36] = "Order_params_xml", [37] = "Web_service_access_token",
        [38] = "agent_url",
    },
    Com_job = {
        [1] = "start_when_directory_changed", [2] = "clear_when_directory_changed",
        [3] = "start", [5] = "include_path", [6] = "name", [7] = "wake", [8] = "state_text",
        [9] = "title", [10] = "delay_after_error", [11] = "order_queue",
        [12] = "java_class_name", [13] = "delay_order_after_setback",
        [14] = "max_order_setbacks", [15] = "clear_delay_after_error", [16] = "Remove",
        [17] = "Execute_command", [19] = "Process_class", [20] = "Folder_path",
        [21] = "Configuration_directory", [22] = "Setback_max", [23] = "Script_code",
    },
    Com_spooler = {
        [0] = "var", "log", "id", "param", "script", "job", "create_variable_set",
        "include_path", "log_dir", "let_run_terminate_and_restart", "variables",
        [12] = "db_name", [13] = "create_job_chain", [14] = "add_job_chain",
        [15] = "job_chain", [16] = "create_order", [17] = "is_service",
        [18] = "java_class_name", [19] = "directory", [20] = "job_chain_exists",
        [21] = "hostname", [22] = "abort_immediately",
        [23] = "abort_immediately_and_restart", [24] = "Db_history_table_name",
        [25] = "Db_order_history_table_name", [26] = "Db_orders_table_name",
        [27] = "Db_tasks_table_name", [28] = "Db_variables_table_name", [29] = "Ini_path",
        [30] = "Execute_xml", [31] = "Tcp_port", [32] = "Udp_port",
        [33] = "Create_xslt_stylesheet", [34] = "Terminate", [35] = "Terminate_and_restart",
        [37] = "Locks", [38] = "Process_classes", [39] = "Supervisor_client",
        [40] = "Configuration_directory", [41] = "Schedule", [42] = "Uri",
    },
    Com_variable_set = {
        [0] = "value", "set_var", "count", "dom", "Clone", "merge", "xml", "java_class_name",
        "var", "Names", "Substitute",
    },
    Com_order = {
        [1] = "id", [2] = "title", [3] = "priority", [4] = "job_chain",
        [5] = "job_chain_node", [7] = "state", [8] = "state_text", [9] = "error",
        [10] = "payload", [11] = "payload_is_type", [12] = "java_class_name",
        [13] = "setback", [14] = "at", [15] = "Run_time", [16] = "remove_from_job_chain",
        [17] = "String_next_start_time", [18] = "Xml", [19] = "Web_service",
        [20] = "Web_service_or_null", [21] = "Web_service_operation",
        [22] = "Web_service_operation_or_null", [23] = "Xml_payload", [24] = "Params",
        [25] = "Suspended", [26] = "Log", [27] = "End_state", [28] = "Setback_count",
        [29] = "Ignore_max_orders", [30] = "History_id", [31] = "Last_error",
    },
}
local NAME_CLASS = {
    spooler_log = "Com_log", spooler_task = "Com_task", spooler_job = "Com_job",
    spooler = "Com_spooler",
}
-- How an object without a begin name is labelled: its class as the default engine names it
-- (objserver.py's class constants), so both engines print the same messages.
local CLASS_LABEL = {
    Com_log = "spooler_log", Com_task = "spooler_task", Com_job = "spooler_job",
    Com_spooler = "spooler", Com_variable_set = "Variable_set", Com_order = "Order",
}
-- spooler_log methods that write a line (DESIGN "log_lines")
local LOG_METHODS = {
    log = true, info = true, msg = true, warn = true, error = true, debug = true,
    debug1 = true, debug2 = true, debug3 = true, debug4 = true, debug5 = true, debug6 = true,
    debug7 = true, debug8 = true, debug9 = true,
}

local function other_side(side)
    if side == CONTROLLER then return TASK_SERVER end
    return CONTROLLER
end

local function api_state(conn)
    if conn.api == nil then
        conn.api = { stack = {}, exports = { {}, {} }, dispids = {}, steps = 0 }
        conn.channel = "api"
        if not conn.candidate then candidates[#candidates + 1], conn.candidate = conn, true end
    end
    return conn.api
end

-- Object table lookup: ids are owned by the exporting side; an id the receiver of a
-- request does not know may be one of the other side's objects (§5.6).
local function object_entry(as, exporter, id)
    if exporter == nil then return as.exports[1][id] or as.exports[2][id] end
    return as.exports[exporter][id] or as.exports[other_side(exporter)][id]
end

-- §5.6: the class of an exported object by its proxy CLSID, else by the C++ class that ends
-- its title (for debugging only, so the last resort; a Scala title names no class).
local function ref_class(ref)
    if ref.clsid and CLSID_CLASS[ref.clsid] then return CLSID_CLASS[ref.clsid] end
    local title = ref.title or ""
    local short = (title:match(".*::(.*)$") or title):match("^%s*(.-)%s*$")
    if DISPIDS[short] then return short end
    return nil
end

-- A begin name says the class (§6.3); else the class seen when the object was exported.
local function object_class(entry)
    if entry == nil then return nil end
    return NAME_CLASS[entry.name or ""] or entry.class
end

-- What messages call an object: its name (begin, RMIS), else its class, as the default
-- engine does. The call that returned it is shown apart (object_returned_by).
local function object_label(entry)
    if entry == nil then return nil end
    return entry.name or CLASS_LABEL[object_class(entry) or ""]
end

local function dispid_name(as, exporter, id, dispid)
    local learned = as.dispids[tostring(exporter) .. ":" .. id]
    if learned and learned[dispid] then return learned[dispid] end
    local class = object_class(object_entry(as, exporter, id))
    if class and DISPIDS[class][dispid] then return DISPIDS[class][dispid] end
    return nil
end

-- A range of the frame; a frame shorter than its layout is malformed (§5.1), not an error.
local function rng(tvb, off, n)
    need(tvb, off, n or 0)
    if n == nil then return tvb(off) end
    return tvb(off, n)
end

-- §5.3 string: int32 byte count, then ISO-8859-1 bytes.
local function read_string(tvb, off)
    local n = u32(tvb, off)
    need(tvb, off + 4, n)
    if n == 0 then return 4, "" end
    return 4 + n, tvb:raw(off + 4, n)
end

local function add_string(tree, field, tvb, off)
    local n, s = read_string(tvb, off)
    local item = tree:add(field, rng(tvb, off, n), TEXT.field(s))
    return n, s, item
end

local dissect_variant  -- forward: VARIANTs and objrefs nest

-- §5.6 objref; returns consumed, { id, is_new, title, clsid, props, item }.
local function dissect_objref(tvb, off, tree, depth)
    need(tvb, off, 9)
    local id = hex8(tvb, off)
    local is_new = u8(tvb, off + 8)
    local item = tree:add(FA.objref, rng(tvb, off, 9))
    local ref = { id = id, is_new = is_new ~= 0, item = item }
    item:add(FA.objref_id, rng(tvb, off, 8))
    item:add(FA.objref_new, rng(tvb, off + 8, 1))
    local pos = off + 9
    if id == "0000000000000000" then
        item:set_text("Object reference: null")
        ref.id = nil
        return 9, ref
    end
    if is_new ~= 0 then
        local n, title = add_string(item, FA.objref_title, tvb, pos)
        ref.title = title
        pos = pos + n
        need(tvb, pos, 16)
        ref.clsid = guid_text(tvb, pos)
        local gi = item:add(FA.objref_clsid, rng(tvb, pos, 16))
        if GUID_NAMES[ref.clsid] then gi:append_text(" (" .. GUID_NAMES[ref.clsid] .. ")") end
        pos = pos + 16
        local count = u32(tvb, pos)
        item:add(FA.objref_props, rng(tvb, pos, 4))
        pos = pos + 4
        if count > (tvb:len() - pos) / 8 then malformed("objref property count " .. count) end
        ref.props = {}
        for _ = 1, count do
            local pstart = pos
            local pn, pname = read_string(tvb, pos)
            local pi = item:add(FA.objref_prop, rng(tvb, pos, pn), TEXT.field(pname))
            pos = pos + pn
            local vn, value = dissect_variant(tvb, pos, pi, depth + 1)
            pos = pos + vn
            pi:set_len(pos - pstart)
            pi:append_text(" = " .. tostring(value.text))
            ref.props[#ref.props + 1] = { name = pname, value = value }
        end
        item:set_text("Object reference: " .. id .. " (new, " .. TEXT.field(title) .. ")")
    else
        item:set_text("Object reference: " .. id)
    end
    item:set_len(pos - off)
    return pos - off, ref
end

-- §5.5 SAFEARRAY after its VT_ARRAY|t tag.
local function dissect_safearray(tvb, off, tree, elem_vt, depth)
    need(tvb, off, 16)
    local item = tree:add(FA.array, rng(tvb, off, 16))
    item:add(FA.array_dims, rng(tvb, off, 2))
    item:add(FA.array_features, rng(tvb, off + 2, 2))
    local count = u32(tvb, off + 4)
    item:add(FA.array_count, rng(tvb, off + 4, 4))
    item:add(FA.array_lbound, rng(tvb, off + 8, 4))
    item:add(FA.array_vt, rng(tvb, off + 12, 4))
    local pos = off + 16
    local values = {}
    local element_size = (elem_vt == 0x11) and 1 or 4
    if count > (tvb:len() - pos) / element_size then malformed("array count " .. count) end
    if elem_vt == 0x11 then
        if count > 0 then item:add(FA.array_bytes, rng(tvb, pos, count)) end
        values.bytes = count
        pos = pos + count
    elseif elem_vt == 0x08 then
        for i = 1, count do
            local n, s = add_string(item, FA.v_string, tvb, pos)
            values[i] = { vt = 8, value = s, text = quote(latin1_to_utf8(s)) }
            pos = pos + n
        end
    elseif elem_vt == 0x0C then
        for i = 1, count do
            local n, v = dissect_variant(tvb, pos, item, depth + 1)
            values[i] = v
            pos = pos + n
        end
    else
        malformed(string.format("array element type 0x%04x", elem_vt))
    end
    item:set_len(pos - off)
    item:set_text(string.format("SAFEARRAY: %d element(s)", count))
    return pos - off, values
end

local FIXED = {  -- vt -> { size, field, reader }
    [0x02] = { 2, "v_int" }, [0x03] = { 4, "v_int" }, [0x10] = { 1, "v_int" },
    [0x16] = { 4, "v_int" }, [0x11] = { 1, "v_uint" }, [0x12] = { 2, "v_uint" },
    [0x13] = { 4, "v_uint" }, [0x17] = { 4, "v_uint" }, [0x06] = { 8, "v_int64" },
    [0x14] = { 8, "v_int64" }, [0x15] = { 8, "v_uint64" }, [0x0A] = { 4, "v_error" },
}

-- §5.4 VARIANT; returns consumed, { vt, value, text, ref, array }.
dissect_variant = function(tvb, off, tree, depth)
    if depth > MAX_DEPTH then malformed("VARIANT nesting too deep") end
    local vt = u32(tvb, off)
    local item = tree:add(FA.variant, rng(tvb, off, 4))
    item:add(FA.vt, rng(tvb, off, 4))
    local pos = off + 4
    local v = { vt = vt }
    local base_vt = vt
    if vt >= 0x2000 and vt < 0x4000 then
        local n, values = dissect_safearray(tvb, pos, item, vt - 0x2000, depth)
        v.array = values
        local size = values.bytes and (values.bytes .. " bytes") or (#values .. " element(s)")
        v.text = "[" .. size .. "]"
        pos = pos + n
    elseif vt == 0x00 or vt == 0x01 then
        v.text = vt == 0 and "empty" or "null"
    elseif FIXED[vt] then
        local size, name = FIXED[vt][1], FIXED[vt][2]
        need(tvb, pos, size)
        local r = rng(tvb, pos, size)
        if name == "v_int" then
            v.value = size == 1 and (r:uint() >= 128 and r:uint() - 256 or r:uint()) or r:int()
            item:add(FA.v_int, r, v.value)
        elseif name == "v_int64" then
            v.value = r:int64()
            item:add(FA.v_int64, r)
        elseif name == "v_uint64" then
            v.value = r:uint64()
            item:add(FA.v_uint64, r)
        else
            v.value = r:uint()
            item:add(FA[name], r, v.value)
        end
        v.text = tostring(v.value)
        if name == "v_error" then v.text = string.format("error 0x%08x", v.value) end
        pos = pos + size
    elseif vt == 0x0B then
        need(tvb, pos, 1)
        v.value = rng(tvb, pos, 1):uint() ~= 0
        item:add(FA.v_bool, rng(tvb, pos, 1), v.value)
        v.text = v.value and "true" or "false"
        pos = pos + 1
    elseif vt == 0x08 then
        local n, s = add_string(item, FA.v_string, tvb, pos)
        v.value = s
        v.text = quote(latin1_to_utf8(s))
        pos = pos + n
    elseif vt == 0x04 or vt == 0x05 or vt == 0x07 then
        need(tvb, pos, 2)
        if rng(tvb, pos, 1):uint() ~= 0x73 then malformed("double without 's' marker") end
        local l = rng(tvb, pos + 1, 1):uint()
        need(tvb, pos + 2, l)
        local text = l > 0 and tvb:raw(pos + 2, l) or ""
        if not TEXT.is_double(text) then  -- as the default engine: a decode error
            malformed(string.format("double text %s at payload byte %d is not a number",
                TEXT.py_repr(text), pos - 4))
        end
        item:add(FA.v_real_text, rng(tvb, pos, 2 + l), text)
        local num = tonumber(text)
        if num then item:add(FA.v_real, rng(tvb, pos, 2 + l), num) end
        v.value, v.text = num, text
        pos = pos + 2 + l
    elseif vt == 0x09 or vt == 0x0D then
        local n, ref = dissect_objref(tvb, pos, item, depth)
        v.ref = ref
        v.text = ref.id and ("object " .. ref.id) or "null object"
        pos = pos + n
    else
        malformed(string.format("VARTYPE 0x%04x not transmittable", base_vt))
    end
    item:set_len(pos - off)
    item:set_text(string.format("VARIANT %s: %s", VT_NAMES[vt] or string.format("0x%04x", vt),
        tostring(v.text)))
    return pos - off, v
end

-- §5.7 DISPPARAMS; returns consumed, args in parameter order (wire order reversed back,
-- named values separately), and the list of all values in wire order.
local function dissect_dispparams(tvb, off, tree, depth)
    local c_args = u32(tvb, off)
    local c_named = u32(tvb, off + 4)
    tree:add(FA.args, rng(tvb, off, 4))
    tree:add(FA.named_args, rng(tvb, off + 4, 4))
    if c_args > 1000 or c_named > c_args or c_args > (tvb:len() - off) / 4 then
        malformed("argument counts " .. c_args .. "/" .. c_named)
    end
    local pos = off + 8
    local named_ids = {}
    for i = 1, c_named do
        named_ids[i] = i32(tvb, pos)
        tree:add(FA.named_dispid, rng(tvb, pos, 4))
        pos = pos + 4
    end
    local wire = {}
    for i = 1, c_args do
        local start = pos
        local label
        if i <= c_named then
            label = "Named argument (DISPID " .. named_ids[i] .. ")"
        else
            label = "Argument " .. (c_args - i + 1)
        end
        local ai = tree:add(FA.argument, rng(tvb, pos, 4))
        local ok, n, v = pcall(dissect_variant, tvb, pos, ai, depth + 1)
        if not ok then
            -- The expert goes on the argument that breaks the list: the call's arguments are
            -- then unknown (jsdissect shows none), what precedes is shown as far as read.
            if getmetatable(n) == Malformed then
                ai:set_text(label .. ": malformed")
                ai:add_proto_expert_info(EA.malformed, n.reason)
                n.shown = true
            end
            error(n, 0)
        end
        pos = pos + n
        ai:set_len(pos - start)
        ai:set_text(label .. ": " .. tostring(v.text))
        wire[i] = v
    end
    local positional, named = {}, {}
    for i = 1, c_named do named[named_ids[i]] = wire[i] end
    for i = c_args, c_named + 1, -1 do positional[#positional + 1] = wire[i] end
    return pos - off, positional, named, wire
end

-- §5.8 EXCEPINFO
local function dissect_excepinfo(tvb, off, tree)
    need(tvb, off, 4)
    local item = tree:add(FA.excepinfo, rng(tvb, off, 4))
    item:add(FA.exc_code, rng(tvb, off, 2))
    item:add(FA.exc_reserved, rng(tvb, off + 2, 2))
    local pos = off + 4
    local info = {}
    local n
    n, info.source = add_string(item, FA.exc_source, tvb, pos)
    pos = pos + n
    n, info.description = add_string(item, FA.exc_description, tvb, pos)
    pos = pos + n
    n, info.helpfile = add_string(item, FA.exc_helpfile, tvb, pos)
    pos = pos + n
    need(tvb, pos, 8)
    item:add(FA.exc_helpcontext, rng(tvb, pos, 4))
    item:add(FA.exc_scode, rng(tvb, pos + 4, 4))
    info.scode = rng(tvb, pos + 4, 4):uint()
    pos = pos + 8
    item:set_len(pos - off)
    return pos - off, info
end

local function hresult_text(hr)
    return HRESULT_NAMES[hr] or string.format("0x%08x", hr)
end

local function add_hresult(tree, tvb, off)
    local hr = u32(tvb, off)
    local item = tree:add(FA.hresult, rng(tvb, off, 4))
    tree:add(FA.hresult_name, rng(tvb, off, 4), hresult_text(hr)):set_generated()
    if hr >= 0x80000000 then
        item:add_proto_expert_info(EA.failed, "Failed HRESULT " .. hresult_text(hr))
    end
    return hr
end

-- Objrefs anywhere in a list of values (arrays nest).
local function each_ref(values, fn)
    for _, v in ipairs(values) do
        if v.ref and v.ref.id then fn(v.ref) end
        if v.array then each_ref(v.array, fn) end
        if v.ref and v.ref.props then
            for _, p in ipairs(v.ref.props) do each_ref({ p.value }, fn) end
        end
    end
end

-- `returned_by`: the call whose answer exports the objects (spooler_task.params), kept for
-- the tree; the first call that returned an object names it there.
local function learn_exports(as, side, values, returned_by)
    each_ref(values, function(ref)
        if ref.is_new then
            local e = as.exports[side][ref.id] or {}
            e.title, e.clsid = ref.title, ref.clsid
            e.class = ref_class(ref) or e.class
            if e.returned_by == nil then e.returned_by = returned_by end
            as.exports[side][ref.id] = e
        end
    end)
end

-- How a call on an object reads in `returned_by` of what it returns: a chain of calls from
-- a named object where there is one (spooler_task.order.params), else the class.
local function object_path(entry)
    if entry == nil then return nil end
    return entry.name or entry.returned_by or object_label(entry)
end

local function label_refs(as, values)
    each_ref(values, function(ref)
        local e = object_entry(as, nil, ref.id)
        local label = object_label(e)
        if label then
            ref.item:append_text(" [" .. TEXT.field(label) .. "]")
            ref.item:add(FA.objref_name, TEXT.field(label)):set_generated()
        end
        if e and e.returned_by then
            ref.item:add(FA.objref_returned_by, TEXT.field(e.returned_by)):set_generated()
        end
    end)
end

---------------------------------------------------------------------------------------------
-- §6.4 step results as jsdissect reads them: Python's ElementTree over expat, with
-- namespaces. The plugin takes an exit code only from a document that parser takes, and
-- says why it refuses one in the parser's words and at its place ("mismatched tag: line 1,
-- column 35"), so both engines give the same exit codes and decode errors. The rules are
-- expat's (xmltok_impl.c tokenizers, xmlrole.c prolog states, xmlparse.c storeAtts and
-- addBinding), on a §5.3 string: one byte per character, as expat counts columns.
---------------------------------------------------------------------------------------------
TEXT.XML = {
    INVALID = "not well-formed (invalid token)",
    UNCLOSED = "unclosed token",
    SYNTAX = "syntax error",
    NO_ELEMENT = "no element found",
    MISMATCH = "mismatched tag",
    DUPLICATE = "duplicate attribute",
    JUNK = "junk after document element",
    PARAM_REF = "illegal parameter entity reference",
    UNDEFINED = "undefined entity",
    BAD_CHAR_REF = "reference to invalid character number",
    MISPLACED = "XML or text declaration not at start of entity",
    BAD_DECL = "XML declaration not well-formed",
    UNCLOSED_CDATA = "unclosed CDATA section",
    UNBOUND = "unbound prefix",
    UNDECLARING = "must not undeclare prefix",
    RESERVED_XML = "reserved prefix (xml) must not be undeclared or bound to another "
        .. "namespace name",
    RESERVED_XMLNS = "reserved prefix (xmlns) must not be declared or undeclared",
    RESERVED_URI = "prefix must not be bound to one of the reserved namespace names",
    XML_NS = "http://www.w3.org/XML/1998/namespace",
    XMLNS_NS = "http://www.w3.org/2000/xmlns/",
    PREDEFINED = { lt = true, gt = true, amp = true, quot = true, apos = true },
    -- prolog tokens a name ends at (prologTok)
    NAME_END = { [62] = true, [41] = true, [44] = true, [124] = true, [91] = true, [37] = true },
}

function TEXT.XML.fail(message, at)
    error({ xml = message, at = at }, 0)
end

function TEXT.XML.space(b)
    return b == 32 or b == 9 or b == 10 or b == 13
end

-- the control characters XML does not allow
function TEXT.XML.nonxml(b)
    return b ~= nil and b < 32 and not TEXT.XML.space(b)
end

-- expat's name characters in ISO-8859-1 (XML 1.0 letters; the colon apart, namespaces on)
function TEXT.XML.name_start(b)
    return b ~= nil and (is_letter(b) or b == 95 or (b >= 0xC0 and b ~= 0xD7 and b ~= 0xF7))
end

function TEXT.XML.name_char(b)
    return TEXT.XML.name_start(b)
        or (b ~= nil and ((b >= 48 and b <= 57) or b == 46 or b == 45 or b == 0xB7))
end

-- the character at `i`; the text ending there leaves the current token unclosed
function TEXT.XML.need(d, i)
    local b = d.s:byte(i)
    if b == nil then TEXT.XML.fail(TEXT.XML.UNCLOSED, d.start) end
    return b
end

-- "line L, column C" of index `at` (expat: CR, LF and CR LF end a line; columns from 0)
function TEXT.XML.where(s, at)
    local line, line_start = 1, 1
    local j = s:find("[\r\n]")
    while j and j < at do
        if s:byte(j) == 13 and s:byte(j + 1) == 10 and j + 1 < at then j = j + 1 end
        line, line_start = line + 1, j + 1
        j = s:find("[\r\n]", j + 1)
    end
    return string.format("line %d, column %d", line, at - line_start)
end

-- A name at `i` (its first character a name start): one colon at most, a name start
-- after it; the index after the name.
function TEXT.XML.qname(d, i)
    local X = TEXT.XML
    local colon = false
    while true do
        i = i + 1
        local b = X.need(d, i)
        if b == 58 then
            if colon then X.fail(X.INVALID, i) end
            colon, i = true, i + 1
            if not X.name_start(X.need(d, i)) then X.fail(X.INVALID, i) end
        elseif not X.name_char(b) then
            return i
        end
    end
end

-- `&` at `amp`: an entity or character reference up to its `;` (scanRef): its kind,
-- its name or number, the index after it.
function TEXT.XML.ref(d, amp)
    local X, s = TEXT.XML, d.s
    local i = amp + 1
    local b = X.need(d, i)
    if b == 35 then
        i = i + 1
        local digit, base = "%d", 10
        if X.need(d, i) == 120 then digit, base, i = "%x", 16, i + 1 end
        local first = i
        while string.char(X.need(d, i)):find(digit) do i = i + 1 end
        if i == first or s:byte(i) ~= 59 then X.fail(X.INVALID, i) end
        -- past 7 digits (leading zeros apart) it is past U+10FFFF; tonumber could wrap
        local digits = s:sub(first, i - 1):gsub("^0+", "")
        return "char", #digits > 7 and math.huge or tonumber("0" .. digits, base), i + 1
    end
    if not X.name_start(b) then X.fail(X.INVALID, i) end
    repeat i = i + 1 until not X.name_char(X.need(d, i))
    if s:byte(i) ~= 59 then X.fail(X.INVALID, i) end
    return "entity", s:sub(amp + 1, i - 1), i + 1
end

-- checkCharRefNumber: a character XML allows
function TEXT.XML.char_ok(n)
    return n == 9 or n == 10 or n == 13 or (n >= 0x20 and n <= 0xD7FF)
        or (n >= 0xE000 and n <= 0xFFFD) or (n >= 0x10000 and n <= 0x10FFFF)
end

-- A reference in content or an attribute value as expat resolves it; an undefined
-- entity in an attribute value is told at its tag (`tag_at`).
function TEXT.XML.check_ref(kind, what, at, tag_at)
    local X = TEXT.XML
    if kind == "char" and not X.char_ok(what) then X.fail(X.BAD_CHAR_REF, at) end
    if kind == "entity" and not X.PREDEFINED[what] then X.fail(X.UNDEFINED, tag_at or at) end
end

-- An attribute at `i` (its name start checked): name, `=`, quoted value (scanAtts).
function TEXT.XML.attribute(d, tag, i)
    local X, s = TEXT.XML, d.s
    local att = { at = i, refs = {} }
    i = X.qname(d, i)
    att.name = s:sub(att.at, i - 1)
    local b = X.need(d, i)
    while X.space(b) do i = i + 1; b = X.need(d, i) end
    if b ~= 61 then X.fail(X.INVALID, i) end
    repeat i = i + 1; b = X.need(d, i) until not X.space(b)
    if b ~= 34 and b ~= 39 then X.fail(X.INVALID, i) end
    local quote, first = b, i + 1
    repeat
        i = i + 1
        b = X.need(d, i)
        if b == 60 or X.nonxml(b) then X.fail(X.INVALID, i) end
        if b == 38 then
            local kind, what, after = X.ref(d, i)
            att.refs[#att.refs + 1] = { kind = kind, what = what, at = i }
            i = after - 1
        end
    until b == quote
    att.raw = s:sub(first, i - 1)
    tag.atts[#tag.atts + 1] = att
    return i + 1
end

-- `<` at `lt` (a name start after it): a start tag, its attributes as written, and the
-- index after it (scanLt, scanAtts).
function TEXT.XML.start_tag(d, lt)
    local X, s = TEXT.XML, d.s
    local tag = { at = lt, atts = {} }
    local i = X.qname(d, lt + 1)
    tag.name = s:sub(lt + 1, i - 1)
    while true do
        local b, spaced = X.need(d, i), false
        while X.space(b) do spaced, i = true, i + 1; b = X.need(d, i) end
        if b == 62 then return tag, i + 1 end
        if b == 47 then
            if X.need(d, i + 1) ~= 62 then X.fail(X.INVALID, i + 1) end
            tag.empty = true
            return tag, i + 2
        end
        if not spaced or not X.name_start(b) then X.fail(X.INVALID, i) end
        i = X.attribute(d, tag, i)
    end
end

-- An attribute value as ElementTree gives it (XML 1.0 §3.3.3, as parse_attrs), UTF-8.
function TEXT.XML.value(att)
    return TEXT.unescape((latin1_to_utf8(att.raw):gsub("\r\n", " "):gsub("[\t\r\n]", " ")))
end

-- addBinding: a namespace declaration of `prefix` ("" the default one)
function TEXT.XML.bind(d, ns, prefix, uri)
    local X = TEXT.XML
    if uri == "" and prefix ~= "" then X.fail(X.UNDECLARING, d.start) end
    if prefix == "xmlns" then X.fail(X.RESERVED_XMLNS, d.start) end
    if uri:find("}", 1, true) then X.fail(X.SYNTAX, d.start) end  -- ElementTree's separator
    if (prefix == "xml") ~= (uri == X.XML_NS) then
        X.fail(prefix == "xml" and X.RESERVED_XML or X.RESERVED_URI, d.start)
    end
    if uri == X.XMLNS_NS then X.fail(X.RESERVED_URI, d.start) end
    ns[prefix] = uri
end

-- storeAtts: per attribute a repeated name, its references, a namespace declaration;
-- then the prefixes of the attributes and of the element. Sets the tag's bindings and its
-- name as ElementTree gives it ({uri}local, UTF-8).
function TEXT.XML.store(d, tag, outer)
    local X = TEXT.XML
    local ns, seen, expanded = setmetatable({}, { __index = outer }), {}, {}
    for _, att in ipairs(tag.atts) do
        if seen[att.name] then X.fail(X.DUPLICATE, att.at) end
        seen[att.name] = true
        for _, r in ipairs(att.refs) do X.check_ref(r.kind, r.what, r.at, tag.at) end
        local prefix = att.name == "xmlns" and "" or att.name:match("^xmlns:(.*)$")
        if prefix then X.bind(d, ns, prefix, X.value(att)) end
    end
    for _, att in ipairs(tag.atts) do
        local prefix, name = att.name:match("^([^:]+):(.*)$")
        if prefix and prefix ~= "xmlns" then
            local key = ns[prefix] and (ns[prefix] .. "}" .. name)
            if key == nil then X.fail(X.UNBOUND, tag.at) end
            if expanded[key] then X.fail(X.DUPLICATE, tag.at) end
            expanded[key] = true
        end
    end
    local prefix, name = tag.name:match("^([^:]+):(.*)$")
    local uri = ns[prefix or ""]
    if prefix and uri == nil then X.fail(X.UNBOUND, tag.at) end
    tag.ns, tag.expanded = ns, latin1_to_utf8(name or tag.name)
    if uri and uri ~= "" then tag.expanded = "{" .. uri .. "}" .. tag.expanded end
end

-- `<!-` at `lt`: a comment and the index after it (scanComment)
function TEXT.XML.comment(d, lt)
    local X = TEXT.XML
    local i = lt + 3
    if X.need(d, i) ~= 45 then X.fail(X.INVALID, i) end
    while true do
        i = i + 1
        local b = X.need(d, i)
        if X.nonxml(b) then X.fail(X.INVALID, i) end
        if b == 45 and X.need(d, i + 1) == 45 then
            if X.need(d, i + 2) ~= 62 then X.fail(X.INVALID, i + 2) end
            return i + 3
        end
    end
end

-- `<![` at `lt` in content: a CDATA section and the index after it (scanCdataSection,
-- cdataSectionTok; one left open is told where its last partial token begins)
function TEXT.XML.cdata(d, lt)
    local X, s = TEXT.XML, d.s
    for k = 1, 6 do
        if X.need(d, lt + 2 + k) ~= ("CDATA["):byte(k) then X.fail(X.INVALID, lt + 2 + k) end
    end
    for i = lt + 9, d.n do
        if X.nonxml(s:byte(i)) then X.fail(X.INVALID, i) end
        if s:sub(i, i + 2) == "]]>" then return i + 3 end
    end
    local tail = s:match("%]?%]$") or s:match("\r$") or ""
    X.fail(X.UNCLOSED_CDATA, d.n + 1 - #tail)
end

-- `<?` at `lt`: a processing instruction ("decl" when its target is `xml`) and the index
-- after it (scanPi, checkPiTarget)
function TEXT.XML.pi(d, lt)
    local X, s = TEXT.XML, d.s
    local i = lt + 2
    if not X.name_start(X.need(d, i)) then X.fail(X.INVALID, i) end
    repeat i = i + 1 until not X.name_char(X.need(d, i))
    local target, b = s:sub(lt + 2, i - 1), s:byte(i)
    if not (X.space(b) or b == 63) or (target ~= "xml" and target:lower() == "xml") then
        X.fail(X.INVALID, i)
    end
    local kind = target == "xml" and "decl" or "pi"
    if b == 63 then
        if X.need(d, i + 1) ~= 62 then X.fail(X.INVALID, i + 1) end
        return kind, i + 2
    end
    while true do
        i = i + 1
        b = X.need(d, i)
        if X.nonxml(b) then X.fail(X.INVALID, i) end
        if b == 63 and X.need(d, i + 1) == 62 then return kind, i + 2 end
    end
end

-- `</` at `lt`: an end tag that must close the open element (scanEndTag, doContent)
function TEXT.XML.end_tag(d, lt, stack)
    local X, s = TEXT.XML, d.s
    local i = lt + 2
    if not X.name_start(X.need(d, i)) then X.fail(X.INVALID, i) end
    repeat i = i + 1 until not (X.name_char(X.need(d, i)) or s:byte(i) == 58)
    local name, b = s:sub(lt + 2, i - 1), s:byte(i)
    while X.space(b) do i = i + 1; b = X.need(d, i) end
    if b ~= 62 then X.fail(X.INVALID, i) end
    if stack[#stack].name ~= name then X.fail(X.MISMATCH, lt + 2) end
    stack[#stack] = nil
    return i + 1
end

-- Markup at `lt` in content; the index after it.
function TEXT.XML.markup(d, lt, stack)
    local X = TEXT.XML
    local b = X.need(d, lt + 1)
    if b == 33 then
        local c = X.need(d, lt + 2)
        if c == 45 then return X.comment(d, lt) end
        if c == 91 then return X.cdata(d, lt) end
        X.fail(X.INVALID, lt + 2)
    elseif b == 63 then
        local kind, after = X.pi(d, lt)
        if kind == "decl" then X.fail(X.MISPLACED, lt) end
        return after
    elseif b == 47 then
        return X.end_tag(d, lt, stack)
    elseif not X.name_start(b) then
        X.fail(X.INVALID, lt + 1)
    end
    local tag, after = X.start_tag(d, lt)
    X.store(d, tag, stack[#stack] and stack[#stack].ns or d.ns)
    d.root = d.root or tag
    if not tag.empty then stack[#stack + 1] = tag end
    return after
end

-- The root element from its `<` at `i` to its end (doContent); the index after it.
function TEXT.XML.content(d, i)
    local X, s = TEXT.XML, d.s
    local stack = {}
    repeat
        d.start = i
        local b = s:byte(i)
        if b == nil then  -- (a CR at the end waits for an LF: told where it is)
            X.fail(X.NO_ELEMENT, s:byte(d.n) == 13 and d.n or d.n + 1)
        end
        if b == 60 then
            i = X.markup(d, i, stack)
        elseif b == 38 then
            local kind, what, after = X.ref(d, i)
            X.check_ref(kind, what, i)
            i = after
        elseif X.nonxml(b) then
            X.fail(X.INVALID, i)
        elseif b == 93 and s:sub(i, i + 2) == "]]>" then
            X.fail(X.INVALID, i + 2)
        else
            i = i + 1
        end
    until #stack == 0
    return i
end

-- `<!` at `lt` outside the root (scanDecl): a comment, or a declaration's name up to the
-- blank or `%` after it
function TEXT.XML.declaration(d, lt)
    local X = TEXT.XML
    local i = lt + 2
    local b = X.need(d, i)
    if b == 45 then return "comment", X.comment(d, lt) end
    if b == 91 then return "[", i + 1 end
    while is_letter(b) or b == 95 do
        i = i + 1
        b = X.need(d, i)
        if b == 37 and (X.space(X.need(d, i + 1)) or d.s:byte(i + 1) == 37) then
            X.fail(X.INVALID, i)
        end
        if X.space(b) or b == 37 then return "declaration", i end
    end
    X.fail(X.INVALID, i)
end

-- a name token outside the root (prologTok): "name", "prefixed", "nmtoken", or "x+" for
-- a name with its occurrence mark
function TEXT.XML.prolog_name(d, i)
    local X, s = TEXT.XML, d.s
    local kind = X.name_start(s:byte(i)) and "name" or "nmtoken"
    while true do
        i = i + 1
        local b = s:byte(i)
        if b == nil or X.space(b) or X.NAME_END[b] then return kind, i end
        if b == 58 then
            if kind == "name" then
                local c = X.need(d, i + 1)
                if c >= 0x80 and not X.name_char(c) then X.fail(X.INVALID, i + 1) end
                kind = X.name_char(c) and "prefixed" or "nmtoken"
                if kind == "prefixed" then i = i + 1 end
            else
                kind = "nmtoken"
            end
        elseif b == 43 or b == 42 or b == 63 then
            if kind == "nmtoken" then X.fail(X.INVALID, i) end
            return "x+", i + 1
        elseif not X.name_char(b) then
            X.fail(X.INVALID, i)
        end
    end
end

-- `"` or `'` at `i` outside the root: a literal (scanLit)
function TEXT.XML.literal(d, i)
    local X, s = TEXT.XML, d.s
    local quote = s:byte(i)
    repeat
        i = i + 1
        local b = X.need(d, i)
        if X.nonxml(b) then X.fail(X.INVALID, i) end
    until b == quote
    local b = s:byte(i + 1)
    if b ~= nil and not X.space(b) and b ~= 62 and b ~= 37 and b ~= 91 then
        X.fail(X.INVALID, i + 1)
    end
    return "literal", i + 1
end

-- `%` or `#` at `i` outside the root: a parameter entity reference, `%`, or a `#NAME`
-- (scanPercent, scanPoundName)
function TEXT.XML.marked_name(d, i)
    local X, s = TEXT.XML, d.s
    local percent = s:byte(i) == 37
    local b = X.need(d, i + 1)
    if percent and (X.space(b) or b == 37) then return "%", i + 1 end
    if not X.name_start(b) then X.fail(X.INVALID, i + 1) end
    local k = i + 1
    while true do
        k = k + 1
        b = s:byte(k)
        if percent and b == 59 then return "param_ref", k + 1 end
        if b == nil and percent then X.fail(X.UNCLOSED, d.start) end
        if b == nil or (not percent and (X.space(b) or b == 41 or b == 62 or b == 37
            or b == 124)) then
            return "#name", k
        end
        if not X.name_char(b) then X.fail(X.INVALID, k) end
    end
end

-- One token before or after the root element (prologTok): its kind and the index after
-- it. "instance" is the root's `<`.
function TEXT.XML.prolog_token(d, i)
    local X, s = TEXT.XML, d.s
    local b = s:byte(i)
    if X.space(b) then
        repeat i = i + 1 until not X.space(s:byte(i))
        return "S", i
    elseif b == 60 then
        local c = X.need(d, i + 1)
        if c == 33 then return X.declaration(d, i) end
        if c == 63 then return X.pi(d, i) end
        if X.name_start(c) or c >= 0x80 then return "instance", i end  -- (checked there)
        X.fail(X.INVALID, i + 1)
    elseif b == 34 or b == 39 then
        return X.literal(d, i)
    elseif b == 37 or b == 35 then
        return X.marked_name(d, i)
    elseif b == 93 then
        if s:byte(i + 1) == 93 and X.need(d, i + 2) == 62 then return "]]>", i + 3 end
        return "]", i + 1
    elseif b == 41 then
        local c = s:byte(i + 1)
        if c == 42 or c == 63 or c == 43 then return ")*", i + 2 end
        if c ~= nil and not X.space(c) and c ~= 62 and c ~= 44 and c ~= 124 and c ~= 41 then
            X.fail(X.INVALID, i + 1)
        end
        return ")", i + 1
    elseif b == 44 or b == 91 or b == 40 or b == 124 or b == 62 then
        return string.char(b), i + 1
    elseif X.name_char(b) or b == 58 then
        return X.prolog_name(d, i)
    end
    X.fail(X.INVALID, i)
end

-- A prolog token where the prolog states allow none of its kind (xmlrole.c common).
function TEXT.XML.misplaced(kind, at)
    local X = TEXT.XML
    if kind == "param_ref" then X.fail(X.PARAM_REF, at) end
    if kind == "decl" then X.fail(X.MISPLACED, at) end
    X.fail(X.SYNTAX, at)
end

-- After `<!DOCTYPE`: its name and `>` (doctype0, doctype1). An external ID or internal
-- subset is not read here: with it jsdissect's parser reads declarations (entities,
-- attribute defaults) the plugin does not follow.
function TEXT.XML.doctype(d, i)
    local X = TEXT.XML
    local named = false
    while true do
        d.start = i
        if i > d.n then X.fail(X.NO_ELEMENT, d.n + 1) end
        local kind, after = X.prolog_token(d, i)
        if kind == ">" and named then return after end
        if named and (kind == "[" or (kind == "name" and (d.s:sub(i, after - 1) == "SYSTEM"
            or d.s:sub(i, after - 1) == "PUBLIC"))) then
            error({ xml = "step answer with a document type (DTD): not read by the plugin" }, 0)
        end
        if kind ~= "S" then
            if named or (kind ~= "name" and kind ~= "prefixed") then X.misplaced(kind, i) end
            named = true
        end
        i = after
    end
end

-- doParseXmlDecl's pseudo-attribute at `i` (blanks first), up to `stop`: its name's
-- start and end, its value's start, the index after it; nil name at the end.
function TEXT.XML.pseudo(d, i, stop)
    local X, s = TEXT.XML, d.s
    if i == stop then return nil, nil, nil, i end
    if not X.space(s:byte(i)) then X.fail(X.BAD_DECL, i) end
    local first = i
    repeat i = i + 1 until not X.space(s:byte(i))
    if i == stop then return nil, nil, nil, first end
    local name, name_end = i, nil
    while true do
        local c = s:byte(i)
        if i >= stop or c >= 0x80 then X.fail(X.BAD_DECL, i) end
        if c == 61 then name_end = i break end
        if X.space(c) then
            name_end = i
            repeat i = i + 1 until not X.space(s:byte(i))
            if s:byte(i) ~= 61 or i >= stop then X.fail(X.BAD_DECL, i) end
            break
        end
        i = i + 1
    end
    if i == name then X.fail(X.BAD_DECL, i) end
    repeat i = i + 1 until not X.space(s:byte(i)) or i >= stop
    local quote = s:byte(i)
    if i >= stop or (quote ~= 34 and quote ~= 39) then X.fail(X.BAD_DECL, i) end
    local value = i + 1
    repeat
        i = i + 1
        local c = s:byte(i)
        if i >= stop or not (c == quote or is_letter(c) or (c >= 48 and c <= 57) or c == 46
            or c == 45 or c == 95) then
            X.fail(X.BAD_DECL, i)
        end
    until c == quote
    return s:sub(name, name_end - 1), name, value, i + 1
end

-- `<?xml … ?>` at the start, ending at `after` (doParseXmlDecl): version, then an
-- encoding and standalone, in that order.
function TEXT.XML.decl(d, after)
    local X, s = TEXT.XML, d.s
    local stop = after - 2
    local name, at, value, i = X.pseudo(d, 6, stop)
    if name == nil then X.fail(X.BAD_DECL, i) end
    if name ~= "version" then X.fail(X.BAD_DECL, at) end
    name, at, value, i = X.pseudo(d, i, stop)
    if name == "encoding" then
        if not is_letter(s:byte(value)) then X.fail(X.BAD_DECL, value) end
        name, at, value, i = X.pseudo(d, i, stop)
    end
    if name == nil then return end
    if name ~= "standalone" then X.fail(X.BAD_DECL, at) end
    local flag = s:sub(value, i - 2)
    if flag ~= "yes" and flag ~= "no" then X.fail(X.BAD_DECL, value) end
    while X.space(s:byte(i)) and i < stop do i = i + 1 end
    if i ~= stop then X.fail(X.BAD_DECL, i) end
end

-- §3.1, §3.4: jsdissect reads commands and answers with expat too, which refuses a
-- document whose XML declaration is not well-formed (`<?xml v.rsion=…`, an encoding name
-- that does not begin with a letter), or not at its start (after a BOM, only the BOM may
-- come before it): nil when there is none or it is well-formed, else expat's complaint.
function TEXT.XML.decl_problem(doc)
    local X = TEXT.XML
    if doc:sub(1, 3) == TEXT.BOM then
        doc = doc:sub(4)
        if doc:find("^%s+<%?xml[%s?]") then return X.MISPLACED end
    end
    if doc:sub(1, 5) ~= "<?xml" then return nil end
    local d = { s = doc, n = #doc, start = 1 }
    local ok, err = pcall(function()
        local kind, after = X.pi(d, 1)
        if kind == "decl" then X.decl(d, after) end
    end)
    if ok then return nil end
    if type(err) ~= "table" or err.xml == nil then error(err, 0) end
    return err.xml
end

-- §3.1: what the default engine refuses before a command's first `<`: anything but NULs,
-- blanks and one UTF-8 BOM (R's parser takes one, as the document's first bytes); a BOM
-- before a plain command name too (R wraps it into the name). nil when the command is
-- read, else the complaint.
function TEXT.XML.lead_problem(doc)
    local text = doc:gsub("%z", ""):gsub("^%s+", "")
    local bom = text:sub(1, 3) == TEXT.BOM
    local lt = text:find("<", 1, true)
    if lt == nil and not bom then return nil end
    if lt and text:sub(bom and 4 or 1, lt - 1):find("^%s*$") then return nil end
    return "request neither XML nor a plain command name"
end

-- Before the root element (prologProcessor): the index of its `<`.
function TEXT.XML.prolog(d)
    local X = TEXT.XML
    local i, typed = 1, false
    while true do
        d.start = i
        if i > d.n then X.fail(X.NO_ELEMENT, d.n + 1) end
        local kind, after = X.prolog_token(d, i)
        if kind == "instance" then return i end
        if kind == "decl" and i == 1 then
            X.decl(d, after)
        elseif kind == "declaration" and d.s:sub(i + 2, after - 1) == "DOCTYPE" and not typed then
            after, typed = X.doctype(d, after), true
        elseif kind ~= "S" and kind ~= "pi" and kind ~= "comment" then
            X.misplaced(kind, i)
        end
        i = after
    end
end

-- After the root element (epilogProcessor): blanks, comments, processing instructions.
function TEXT.XML.epilog(d, i)
    local X = TEXT.XML
    while i <= d.n do
        d.start = i
        local kind, after = X.prolog_token(d, i)
        if kind ~= "S" and kind ~= "pi" and kind ~= "comment" then X.fail(X.JUNK, i) end
        i = after
    end
end

-- expat reads a document whose first or second byte is NUL as UTF-16 (initScan): big-
-- endian after a NUL first, else little-endian; the bytes it reads are those of the UTF-8
-- text jsdissect hands it. Read so here when every character is one byte wide again; nil
-- when not.
function TEXT.XML.utf16(text)
    text = latin1_to_utf8(text)
    if #text % 2 == 1 then return nil end
    local high = text:byte(1) == 0 and 0 or 1  -- where a pair has its high byte
    local out = {}
    for k = 1, #text, 2 do
        if text:byte(k + high) ~= 0 then return nil end
        out[#out + 1] = text:sub(k + 1 - high, k + 1 - high)
    end
    return table.concat(out)
end

-- The root element of a step result as jsdissect's parser reads it: its name as
-- ElementTree gives it and its attributes without a prefix (values UTF-8); or nil and the
-- decoder's complaint.
function TEXT.XML.root(text)
    local X = TEXT.XML
    local d = { s = text, n = #text, ns = { xml = X.XML_NS } }
    local ok, err = pcall(function()
        -- initScan guesses from the first two bytes of the UTF-8 it is given; a lone NUL
        -- waits for more
        local head = latin1_to_utf8(text:sub(1, 2))
        if text == "\0" then X.fail(X.UNCLOSED, 1) end
        if #head >= 2 and (head:byte(1) == 0 or head:byte(2) == 0) then
            d.s = X.utf16(text)
            if d.s == nil then
                error({ xml = "step answer read as UTF-16: not read by the plugin" }, 0)
            end
            d.n = #d.s
        end
        X.epilog(d, X.content(d, X.prolog(d)))
    end)
    if not ok then
        if type(err) ~= "table" or err.xml == nil then error(err, 0) end
        if err.at == nil then return nil, err.xml end
        return nil, "malformed <process.result>: " .. err.xml .. ": " .. X.where(d.s, err.at)
    end
    local attrs = {}
    for _, att in ipairs(d.root.atts) do
        if not att.name:find(":", 1, true) and att.name ~= "xmlns" then
            attrs[att.name] = X.value(att)
        end
    end
    return { name = d.root.expanded, attrs = attrs }
end

-- §6.4 shell step result <process.result spooler_process_result=… exit_code=… signal=…>:
-- its attributes, or nil and the default engine's decode error
local function process_result(text)
    local root, problem = TEXT.XML.root(text)
    if root and root.name ~= "process.result" then
        return nil, "step answer is <" .. root.name .. ">, not <process.result>"
    end
    return root and root.attrs, problem
end

-- §6.4 as the default engine reads a step answer (`m`, its task `task` or nil): an XML
-- document with the root <process.result>, its numbers int(value.strip()) with exact
-- digits; what it refuses is a decode error (add_lifecycle shows it)
function TEXT.step_result(m, task)
    local attrs
    attrs, m.result_problem = process_result(m.result.value)
    local code = attrs and TEXT.integer(attrs.exit_code)
    if code then
        local signal = TEXT.integer(attrs.signal)
        m.exit_code, m.signal = TEXT.field_number(code, 32), TEXT.field_number(signal, 32)
        if task then task.exit_code, task.signal = code, signal end
    end
end

-- Decimal digits as a UInt64 field value; nil for none, or for a number past 2^64-1.
function TEXT.uint64(digits)
    if digits == nil then return nil end
    digits = digits:gsub("^0+(%d)", "%1")
    if #digits > 20 or (#digits == 20 and digits > "18446744073709551615") then return nil end
    local v = UInt64(0)
    for d in digits:gmatch("%d") do v = v * 10 + tonumber(d) end
    return v
end

-- A text that is a <process.result> document, told without parsing it (XML whitespace).
function TEXT.is_process_result(s)
    return s:find("^[ \t\r\n]*<process%.result[ \t\r\n/>]") ~= nil
        or s:find("^[ \t\r\n]*<%?xml[^>]*%?>[ \t\r\n]*<process%.result[ \t\r\n/>]") ~= nil
end

local function count_lines(s)
    local n = 0
    for line in (s .. "\n"):gmatch("([^\n]*)\n") do
        if line:find("%S") then n = n + 1 end
    end
    return n
end

-- The request part of one message: parses it into `m` and the tree; returns Info text.
local function dissect_request(tvb, tree, m, as)
    local cls = m.cls
    if cls == 0x4B then
        if tvb:len() ~= 5 then malformed("keep-alive with a body") end
        m.cmd = 0x4B
        return "keep-alive"
    end
    if cls == 0x53 then  -- §5.9 CreateInstance
        tree:add(FA.session, rng(tvb, 5, 8))
        local c = u8(tvb, 13)
        tree:add(FA.command, rng(tvb, 13, 1))
        if c ~= 0x43 then malformed(string.format("session command 0x%02x", c)) end
        m.cmd = 0x43
        need(tvb, 14, 16)
        local clsid = guid_text(tvb, 14)
        local ci = tree:add(FA.clsid, rng(tvb, 14, 16))
        if GUID_NAMES[clsid] then ci:append_text(" (" .. GUID_NAMES[clsid] .. ")") end
        local n = dissect_objref(tvb, 30, tree, 0)
        local pos = 30 + n
        tree:add(FA.context, rng(tvb, pos, 4))
        local count = u32(tvb, pos + 4)
        tree:add(FA.iid_count, rng(tvb, pos + 4, 4))
        pos = pos + 8
        need(tvb, pos, 16 * count)
        for i = 1, count do
            local iid = guid_text(tvb, pos)
            local ii = tree:add(FA.iid, rng(tvb, pos, 16))
            if GUID_NAMES[iid] then ii:append_text(" (" .. GUID_NAMES[iid] .. ")") end
            pos = pos + 16
        end
        m.method = "CreateInstance"
        return "CreateInstance " .. (GUID_NAMES[clsid] or clsid)
    end
    -- §5.9 object request header
    need(tvb, 5, 9)
    m.objid = hex8(tvb, 5)
    tree:add(FA.object_id, rng(tvb, 5, 8))
    m.cmd = u8(tvb, 13)
    tree:add(FA.command, rng(tvb, 13, 1))
    local target = object_entry(as, other_side(m.sender), m.objid)
    if not m.labelled then m.objname, m.objpath = object_label(target), object_path(target) end
    -- names (begin names, methods) are kept as sent (§5.3) and shown as UTF-8
    local who = TEXT.field(m.objname) or m.objid
    if m.objname then tree:add(FA.object_name, rng(tvb, 5, 8), who):set_generated() end
    if target and target.returned_by then
        tree:add(FA.object_returned_by, rng(tvb, 5, 8), TEXT.field(target.returned_by))
            :set_generated()
    end
    if m.cmd == 0x52 then
        if tvb:len() ~= 14 then malformed("Release with a body") end
        return "Release " .. who
    elseif m.cmd == 0x51 then
        need(tvb, 14, 16)
        tree:add(FA.iid, rng(tvb, 14, 16))
        return "QueryInterface " .. who
    elseif m.cmd == 0x47 then
        need(tvb, 14, 24)
        tree:add(FA.iid, rng(tvb, 14, 16))
        tree:add(FA.lcid, rng(tvb, 30, 4))
        local count = u32(tvb, 34)
        tree:add(FA.name_count, rng(tvb, 34, 4))
        if count > (tvb:len() - 38) / 4 then malformed("name count " .. count) end
        local pos = 38
        for i = 1, count do
            local n, name = add_string(tree, FA.method, tvb, pos)
            if i == 1 then m.method = name end
            pos = pos + n
        end
        if pos ~= tvb:len() then malformed("bytes after the names") end
        return "GetIDsOfNames " .. who .. "." .. tostring(TEXT.field(m.method))
    elseif m.cmd == 0x49 then
        need(tvb, 14, 28)
        m.dispid = rng(tvb, 14, 4):int()
        tree:add(FA.dispid, rng(tvb, 14, 4))
        tree:add(FA.iid, rng(tvb, 18, 16))
        tree:add(FA.lcid, rng(tvb, 34, 4))
        m.flags = u32(tvb, 38)
        local fi = tree:add(FA.flags, rng(tvb, 38, 4))
        fi:add(FA.flag_method, rng(tvb, 38, 4))
        fi:add(FA.flag_get, rng(tvb, 38, 4))
        fi:add(FA.flag_put, rng(tvb, 38, 4))
        fi:add(FA.flag_putref, rng(tvb, 38, 4))
        m.method = dispid_name(as, other_side(m.sender), m.objid, m.dispid)
        local shown = TEXT.field(m.method)
        if shown then tree:add(FA.method, rng(tvb, 14, 4), shown):set_generated() end
        local n, args, named, wire = dissect_dispparams(tvb, 42, tree, 0)
        if 42 + n ~= tvb:len() then malformed("bytes after the arguments") end
        m.args, m.named, m.wire = args, named, wire
        local verb = "invoke"
        if band(m.flags, 0x4) ~= 0 or band(m.flags, 0x8) ~= 0 then
            verb = "put"
        elseif band(m.flags, 0x2) ~= 0 and band(m.flags, 0x1) == 0 then
            verb = "get"
        end
        return verb .. " " .. who .. "." .. (shown or ("dispid " .. m.dispid))
    elseif m.cmd == 0x41 then
        local n, name = add_string(tree, FA.method, tvb, 14)
        m.method = name
        local pn, args, named, wire = dissect_dispparams(tvb, 14 + n, tree, 0)
        if 14 + n + pn ~= tvb:len() then malformed("bytes after the arguments") end
        m.args, m.named, m.wire = args, named, wire
        local texts = {}
        for i, a in ipairs(args) do
            if i > 3 then texts[#texts + 1] = "..." break end
            texts[#texts + 1] = tostring(a.text)
        end
        return "call " .. who .. "." .. TEXT.field(name) .. "(" .. table.concat(texts, ", ")
            .. ")"
    end
    malformed(string.format("object command 0x%02x", m.cmd))
end

-- The answer part of one message, laid out by the request it answers (§5.10).
local function dissect_reply(tvb, tree, m, req)
    if m.cls == 0x45 then  -- §5.11: strings until the payload ends, as far as they fit
        m.error = {}
        local strings, last, pos = {}, {}, 5
        local ok, problem = pcall(function()
            while pos < tvb:len() do
                local n, s = read_string(tvb, pos)
                local key, value = s:match("^(%a+)=(.*)$")
                if key ~= "name" and key ~= "code" and key ~= "what" then key = nil end
                strings[#strings + 1] = { pos = pos, n = n, s = s, key = key, value = value }
                if key then m.error[key], last[key] = value, #strings end
                pos = pos + n
            end
        end)
        -- The controller keeps the last string of each key (C++
        -- Simple_operation::async_check_error_, and so does jsdissect): that one fills the
        -- key's field, an earlier one is only an error string.
        for i, e in ipairs(strings) do
            if e.key and last[e.key] == i then
                tree:add(FA["error_" .. e.key], rng(tvb, e.pos, e.n), TEXT.field(e.value))
            else
                local item = tree:add(FA.error_string, rng(tvb, e.pos, e.n), TEXT.field(e.s))
                if e.key then item:append_text(" (a later " .. e.key .. "= replaces it)") end
            end
        end
        if not ok then error(problem, 0) end
        tree:add_proto_expert_info(EA.error, "E " .. TEXT.field(tostring(m.error.code)) .. " "
            .. TEXT.field(tostring(m.error.what)))
        return "E " .. TEXT.field(tostring(m.error.code))
    end
    local what = req and (TEXT.field(req.method) or COMMAND_NAMES[req.cmd]) or "?"
    local cmd = req and req.cmd
    if tvb:len() == 5 then
        if cmd ~= nil and cmd ~= 0x52 and cmd ~= 0x4B then malformed("answer without HRESULT") end
        return "answer " .. what
    end
    if cmd == 0x52 or cmd == 0x4B then malformed("bytes after a Release/keep-alive answer") end
    m.hr = add_hresult(tree, tvb, 5)
    local failed = m.hr >= 0x80000000
    local pos = 9
    if cmd == 0x43 then
        if not failed then
            m.values = {}
            while pos < tvb:len() do
                tree:add(FA.hresult, rng(tvb, pos, 4))
                local n, ref = dissect_objref(tvb, pos + 4, tree, 0)
                m.values[#m.values + 1] = { ref = ref }
                pos = pos + 4 + n
            end
        end
    elseif cmd == 0x51 then
        if not failed then
            local n, ref = dissect_objref(tvb, pos, tree, 0)
            m.values = { { ref = ref } }
            pos = pos + n
        end
    elseif cmd == 0x47 then
        if not failed then
            m.dispids = {}
            while pos < tvb:len() do
                m.dispids[#m.dispids + 1] = i32(tvb, pos)
                tree:add(FA.dispid, rng(tvb, pos, 4))
                pos = pos + 4
            end
        end
    elseif failed and cmd ~= 0x41 then
        if pos < tvb:len() then
            tree:add(FA.arg_err, rng(tvb, pos, 4))
            local n, exc = dissect_excepinfo(tvb, pos + 4, tree)
            m.excepinfo = exc
            pos = pos + 4 + n
        end
    elseif cmd == nil then
        -- no request to tell the layout (picked up mid-stream): a VARIANT if one fills
        -- the rest exactly (DISPIDs or objrefs may begin like one), as jsdissect takes it
        local probe, size = pcall(dissect_variant, tvb, pos, NULL_TREE, 0)
        if probe and pos + size == tvb:len() then
            local n, v = dissect_variant(tvb, pos, tree, 0)
            m.result, m.values = v, { v }
            pos = pos + n
        elseif pos < tvb:len() then
            tree:add(FA.segment, rng(tvb, pos)):set_text("Answer body (request not captured)")
            pos = tvb:len()
        end
    else
        local n, v = dissect_variant(tvb, pos, tree, 0)
        m.result = v
        m.values = { v }
        pos = pos + n
    end
    if pos ~= tvb:len() then malformed("bytes after the answer") end
    if failed then return "answer " .. what .. ": " .. hresult_text(m.hr) end
    local v = m.result and m.result.value
    local result = type(v) == "string" and v:find("<process.result", 1, true)
        and process_result(v)
    if result then
        return "answer " .. what .. ": process.result exit_code=" .. tostring(result.exit_code)
            .. (result.signal and (" signal=" .. result.signal) or "")
    end
    if m.result then return "answer " .. what .. ": " .. tostring(m.result.text) end
    if m.dispids then return "answer " .. what .. ": dispid " .. tostring(m.dispids[1]) end
    return "answer " .. what
end

-- Who sent this frame, learning the roles on the way (§4: the controller accepts; it
-- sends CreateInstance and the calls by name, the task server G, I and K).
local function sender_of(conn, as, pinfo, src, sport, cls, cmd)
    if as.controller == nil then
        local dst, dport = tostring(pinfo.dst), pinfo.dst_port
        if conn.server then
            as.controller = conn.server
        elseif cls == 0x53 or (cls == 0x4F and cmd == 0x41) then
            as.controller = { addr = src, port = sport }
        elseif cls == 0x4B or (cls == 0x4F and (cmd == 0x47 or cmd == 0x49)) then
            as.controller = { addr = dst, port = dport }
        elseif watched[dport] and not watched[sport] then
            as.controller = { addr = dst, port = dport }
        elseif watched[sport] and not watched[dport] then
            as.controller = { addr = src, port = sport }
        else
            return nil
        end
        -- the exports of answers sent before the sides were told (picked up mid-stream)
        for _, e in ipairs(as.unsided or {}) do
            local side = is_endpoint(as.controller, e.addr, e.port) and CONTROLLER or TASK_SERVER
            learn_exports(as, side, e.values, nil)
        end
        as.unsided = nil
    end
    if is_endpoint(as.controller, src, sport) then return CONTROLLER end
    return TASK_SERVER
end

-- §5.2, §12: an answer answers the most recent unanswered request of the other side.
-- Requests of its own sender above it stay open: one sent while the other side's request
-- was on its way (a K just after an answer, then the controller's next call, §5.1) is
-- still answered; one whose answer the capture lost never is. With no request of the
-- other side pending, the request it answers was itself not captured.
local function pair_answer(as, m)
    for i = #as.stack, 1, -1 do
        local req = as.stack[i]
        if m.sender == nil or req.sender ~= m.sender then
            table.remove(as.stack, i)
            m.req, req.resp, m.depth = req, m, req.depth
            return
        end
    end
end

-- §6.5 log forwarding as it looks on the wire: Invoke DISPID 14 as a method with two
-- arguments, an integer level (the fixed-size VARTYPEs but VT_ERROR and VT_CY) and a text.
local function looks_like_log_call(m)
    local args = m.args or {}
    local level, text = args[1], args[2]
    return m.cmd == 0x49 and m.dispid == 14 and band(m.flags or 0, 0x1) ~= 0 and #args == 2
        and FIXED[level.vt] ~= nil and level.vt ~= 0x0A and level.vt ~= 0x06
        and text.vt == 0x08
end

-- The class of the object a request calls. One of no known class called like a log is the
-- spooler_log of a task picked up after its begin, as the default engine takes it.
local function target_class(as, m)
    if m.cls ~= 0x4F or m.objid == nil then return nil end
    local exporter = other_side(m.sender)
    local target = object_entry(as, exporter, m.objid)
    local class = object_class(target)
    if class or not looks_like_log_call(m) then return class end
    target = target or {}
    target.class = "Com_log"
    as.exports[exporter][m.objid] = as.exports[exporter][m.objid] or target
    m.method = m.method or dispid_name(as, exporter, m.objid, m.dispid)
    return target.class
end

-- The controller of a callback picked up mid-stream whose messages so far (releases, an
-- error answer) do not tell the sides: as the default engine guesses it, the side with the
-- lower port accepted (the connecting side's port is usually the ephemeral, higher one).
local function guessed_controller(conn)
    local a, b = conn.ends[1], conn.ends[2]
    if a.port < b.port then return a end
    return b
end

-- A callback connection without a matched task: try the start commands seen so far
-- (picked up without its SYN), else it is a partial row of its own. Done before a
-- message's first-pass effects, so that the first message of a connection picked up
-- mid-stream counts for the task too (DESIGN "What fills a row": count what was captured).
local function callback_task(conn, as)
    if conn.task ~= nil or conn.partial_checked then return end
    conn.partial_checked = true
    local c = as.controller or guessed_controller(conn)
    if conn.syn == nil or conn.rematch then
        match_callback(conn, c.addr, c.port, peer_of(conn, c).addr, conn.syn or conn.first)
    end
    if conn.task == nil then
        conn.task = new_task({ controller = c.addr, callback_port = c.port, callback = conn,
            guessed = as.controller == nil and c or nil })
    end
end

-- First-pass effects of a request: the stack, names, lifecycle facts of its task.
local function apply_request(conn, as, m)
    local task = conn.task
    m.depth = #as.stack
    as.stack[#as.stack + 1] = m
    if m.wire then learn_exports(as, m.sender, m.wire) end
    local class = target_class(as, m)
    local name = m.method and m.method:lower()
    -- picked up mid-stream: the object the controller calls by name is the RMIS (§6.1),
    -- and so is the one it releases (the only Release it sends, §5.2)
    if as.rmis == nil and m.cls == 0x4F and (m.cmd == 0x41 or m.cmd == 0x52)
        and m.sender == CONTROLLER then
        as.rmis = m.objid
        local e = as.exports[TASK_SERVER][m.objid] or {}
        e.name = e.name or "RMIS"
        as.exports[TASK_SERVER][m.objid] = e
    end
    -- The object as named when the request was sent: what is learned later (a log call on
    -- it, say) does not rename it in the second pass, as jsdissect names it.
    if m.objid and m.sender then
        local target = object_entry(as, other_side(m.sender), m.objid)
        m.objname, m.objpath, m.labelled = object_label(target), object_path(target), true
    end
    local on_rmis = m.cls == 0x4F and m.objid ~= nil and m.objid == as.rmis
        and m.sender == CONTROLLER
    if on_rmis and m.cmd == 0x41 then
        if name == "begin" then
            if task and task.begin_sent == nil then task.begin_sent = m.t end
            -- §6.3: the names array (first on the wire) pairs with the objects array
            local names, objects = m.wire and m.wire[1], m.wire and m.wire[2]
            if names and objects and names.array and objects.array then
                for i, nv in ipairs(names.array) do
                    local ov = objects.array[i]
                    if ov and ov.ref and ov.ref.id and type(nv.value) == "string" then
                        local e = as.exports[CONTROLLER][ov.ref.id] or {}
                        e.name = nv.value
                        as.exports[CONTROLLER][ov.ref.id] = e
                    end
                end
            end
        elseif name == "step" then
            as.steps = as.steps + 1
            m.step = as.steps
        elseif name == "construct" then
            -- §6.2 as the default engine reads it: each `key=value` string split at its first
            -- '=' (none: the value is empty), the first of a key counts; the job as UTF-8
            -- (§5.3 strings are ISO-8859-1), the task id a decimal integer (sign allowed)
            local arr = m.args and m.args[1] and m.args[1].array
            local job, task_id
            for _, v in ipairs(arr or {}) do
                if type(v.value) == "string" then
                    local k, val = v.value:match("^([^=]*)=(.*)$")
                    if k == nil then k, val = v.value, "" end
                    if k == "job" and job == nil then job = latin1_to_utf8(val) end
                    if k == "task_id" and task_id == nil then task_id = latin1_to_utf8(val) end
                end
            end
            m.job, m.task_id_text = job, TEXT.integer(task_id)
            m.task_id = TEXT.field_number(m.task_id_text, 33)
            if m.task_id and m.task_id < 0 then m.task_id = nil end  -- (a uint32 field)
            if task then task.job, task.task_id = m.job, m.task_id_text end
        end
    end
    if on_rmis and m.cmd == 0x52 then m.release_rmis = true end
    -- DESIGN "log_lines": strings passed to a spooler_log method that writes a line
    if m.cls == 0x4F and (m.cmd == 0x49 or m.cmd == 0x41) and class == "Com_log"
        and name and LOG_METHODS[name] and (m.cmd == 0x41 or band(m.flags or 0, 0x1) ~= 0) then
        local lines = 0
        for _, v in ipairs(m.args or {}) do
            if type(v.value) == "string" then lines = lines + count_lines(v.value) end
        end
        m.log_lines = lines
        if task then task.log_lines = (task.log_lines or 0) + lines end
    end
    -- §6.5: spooler_task.exit_code put (DISPID 30)
    if m.cls == 0x4F and m.cmd == 0x49 and class == "Com_task"
        and band(m.flags or 0, 0xC) ~= 0 and (m.dispid == 30 or name == "exit_code") then
        local v = (m.named and m.named[-3]) or (m.args and m.args[#m.args])
        -- the integer VARTYPEs (§5.4: I1 UI1 I2 UI2 I4 UI4 INT UINT I8 UI8; not ERROR, CY)
        if v and TEXT.INTEGER_VTS[v.vt] and v.value ~= nil then
            local text = tostring(v.value)  -- I8/UI8 are Int64/UInt64: their exact digits
            m.exit_code = TEXT.field_number(text, 32)
            if task then task.exit_code, task.signal = text, nil end
        end
    end
end

-- First-pass effects of an answer (already paired), its body parsed.
local function apply_reply(conn, as, m, pinfo)
    local task = conn.task
    local req = m.req
    if m.error then
        -- §5.3 strings are ISO-8859-1; the task table is UTF-8
        add_error(task, m.t_done, m.error.code and latin1_to_utf8(m.error.code),
            m.error.what and latin1_to_utf8(m.error.what))
    elseif m.hr and m.hr >= 0x80000000 then
        local exc = m.excepinfo
        local text = exc and ((exc.description ~= "" and exc.description) or exc.source)
        add_error(task, m.t_done, string.format("COM-%08X", m.hr), text and latin1_to_utf8(text))
    end
    if req == nil then
        -- a new export is one whatever it answers (§12)
        if m.values and m.sender then
            learn_exports(as, m.sender, m.values, nil)
        elseif m.values then  -- learned once the sides are told (sender_of)
            as.unsided = as.unsided or {}
            table.insert(as.unsided,
                { addr = tostring(pinfo.src), port = pinfo.src_port, values = m.values })
        end
        -- its call not captured (the capture began in between): a <process.result> is a
        -- shell job's step answer all the same (§6.4), as the default engine takes it
        if m.result and m.result.vt == 0x08 and TEXT.is_process_result(m.result.value) then
            TEXT.step_result(m, task)
        end
        return
    end
    -- A Release sent before the sides were told (picked up mid-stream: releases first),
    -- answered once a later request told them: the controller's is the RMIS's (§5.2)
    if req.sender == nil and req.from and req.cls == 0x4F and req.cmd == 0x52
        and is_endpoint(as.controller, req.from.addr, req.from.port) then
        local e = as.exports[TASK_SERVER][req.objid]
        -- labelled as when it was sent, before this names it, as jsdissect labels it
        req.objname, req.objpath, req.labelled = object_label(e), object_path(e), true
        if as.rmis == nil then
            as.rmis = req.objid
            e = e or {}
            e.name = e.name or "RMIS"
            as.exports[TASK_SERVER][req.objid] = e
        end
        req.release_rmis = req.objid == as.rmis
    end
    if m.values then
        local returned_by
        if req.cmd ~= 0x43 and req.objpath and req.method then
            returned_by = req.objpath .. "." .. req.method
        end
        learn_exports(as, m.sender, m.values, returned_by)
        local first = m.values[1]
        if req.cmd == 0x43 and first and first.ref and first.ref.id then
            as.rmis = first.ref.id
            local e = m.sender and as.exports[m.sender][as.rmis]
            if e then e.name = "RMIS" end
        end
    end
    if req.cmd == 0x47 and m.dispids and m.dispids[1] and req.method and m.sender then
        local k = tostring(m.sender) .. ":" .. req.objid
        as.dispids[k] = as.dispids[k] or {}
        as.dispids[k][m.dispids[1]] = req.method
    end
    if task == nil then return end
    local name = req.method and req.method:lower()
    if req.cls == 0x4F and req.cmd == 0x41 and req.objid == as.rmis then
        if name == "begin" and task.begin_answered == nil then
            task.begin_answered, task.begin_answer_frame = m.t_done, pinfo.number
        elseif name == "step" and m.result and m.result.vt == 0x08 then
            TEXT.step_result(m, task)
        end
    end
    if req.release_rmis and task.release_answered == nil then
        task.release_answered = m.t_done
    end
end

-- Generated items tying a message to its partner, its task and the command channel.
local function add_api_links(item, conn, m)
    if m.t then item:add(FA.first_byte, us_nstime(exact_time(m.t))):set_generated() end
    if m.request and m.resp then
        item:add(FA.response_in, m.resp.frame):set_generated()
    elseif not m.request and m.req then
        item:add(FA.request_in, m.req.frame):set_generated()
        item:add(FA.time, us_nstime(m.t_done - m.req.t)):set_generated()
    end
    if m.depth then item:add(FA.depth, m.depth):set_generated() end
    local task = conn.task
    if task then
        add_process_id(item, task)
        if task.start_frame then item:add(FA.announced_in, task.start_frame):set_generated() end
    end
end

-- Generated facts of the task lifecycle (§6.6) on the message that carries them.
local function add_lifecycle(item, m)
    if m.request then
        if m.job or m.task_id_text then
            for _, v in ipairs(m.args[1].array) do
                if type(v.value) == "string" then
                    item:add(FA.param, TEXT.field(v.value)):set_generated()
                end
            end
            if m.job then item:add(FA.job, TEXT.shown(m.job)):set_generated() end
            if m.task_id then item:add(FA.task_id, m.task_id):set_generated() end
        end
        if m.step then item:add(FA.step, m.step):set_generated() end
        if m.log_lines then
            for _, v in ipairs(m.args or {}) do
                if type(v.value) == "string" then
                    item:add(FA.log_text, TEXT.field(v.value)):set_generated()
                elseif type(v.value) == "number" then
                    item:add(FA.log_level, v.value):set_generated()
                end
            end
            item:add(FA.log_lines, m.log_lines):set_generated()
        end
    else
        local req = m.req
        local name = req and req.method and req.method:lower()
        local what = req and (TEXT.field(req.method) or COMMAND_NAMES[req.cmd])
        if what then item:add(FA.method, what):set_generated() end
        if name == "begin" and m.result and m.result.vt == 0x0B then
            item:add(FA.started, m.result.value):set_generated()
        end
        if m.signal then item:add(FA.signal, m.signal):set_generated() end
        if m.result_problem then item:add_proto_expert_info(EA.malformed, m.result_problem) end
    end
    if m.exit_code then item:add(FA.exit_code, m.exit_code):set_generated() end
end

-- One complete callback frame (its 4-byte length included); returns its Info text.
local function dissect_api_frame(ftvb, pinfo, tree, conn, key, sent, done, src, sport)
    local as = api_state(conn)
    local first_pass = not pinfo.visited
    local item = tree:add(p_api, ftvb)
    item:add(FA.length, ftvb(0, 4))
    local cls = ftvb(4, 1):uint()
    item:add(FA.class, ftvb(4, 1))
    local stored = records[key]
    local m = stored
    if m == nil then
        local cmd = (cls == 0x4F and ftvb:len() >= 14) and ftvb(13, 1):uint() or nil
        m = { cls = cls, frame = pinfo.number, t = sent, t_done = done,
              request = cls == 0x53 or cls == 0x4F or cls == 0x4B }
        m.sender = sender_of(conn, as, pinfo, src, sport, cls, cmd)
        if m.sender == nil then m.from = { addr = src, port = sport } end  -- told later
        -- an answer's layout depends on its request (§5.10): pair before parsing
        if first_pass and not m.request then pair_answer(as, m) end
    end
    if m.sender then item:add(FA.sender, m.sender):set_generated() end
    local ok, info = pcall(function()
        if cls == 0x4E then
            item:add_proto_expert_info(EA.no_session)
            return "N"
        end
        if m.request then return dissect_request(ftvb, item, m, as) end
        return dissect_reply(ftvb, item, m, m.req)
    end)
    if not ok then
        if getmetatable(info) ~= Malformed then error(info, 0) end
        if not info.shown then item:add_proto_expert_info(EA.malformed, info.reason) end
        info = "malformed " .. (CLASS_NAMES[cls] or string.format("class 0x%02x", cls))
    end
    if first_pass and stored == nil then
        callback_task(conn, as)
        if m.request then apply_request(conn, as, m) else apply_reply(conn, as, m, pinfo) end
        records[key] = m
    end
    if not m.request and m.req == nil then item:add_proto_expert_info(EA.unpaired) end
    label_refs(as, m.wire or m.values or {})
    add_lifecycle(item, m)
    add_api_links(item, conn, m)
    local arrow = ARROWS[m.sender] or ""
    item:append_text(": " .. arrow .. tostring(info))
    return arrow .. tostring(info)
end

-- A frame not completely captured (lost segment, snaplen) may have later bytes still
-- captured, after the loss or as the rest of a segment the snaplen cut: it is complete when
-- the last of them arrives (DESIGN "Exact times": the latest, over its bytes, of the time
-- each was first captured). The dissector notes the frame (`here`: its bytes from its start
-- to the end of this segment, on the wire); the postdissector, which reads each segment's
-- sequence number and length from the frame's bytes in the first pass, follows it. (One
-- table of functions: the main chunk is near Lua's limit of 200 local variables.)
local Rest = {}
function Rest.watch(conn, dir, pending, here, frame)
    if pending.need == nil then return end
    conn.rest = conn.rest or {}
    conn.rest[dir] = { p = pending, here = here, frame = frame }
end

-- First pass, every segment of a callback connection with payload (`seq`, `len` on the
-- wire): bytes of a noted frame not captured before make it complete now (first copy
-- wins); a segment that begins inside a frame given up on is its rest, shown as such in
-- later passes (no frame starts there); a segment at or after its end ends the watch.
function Rest.track(conn, pinfo, seq, len, now)
    local dir = direction(pinfo)
    local r = conn.rest and conn.rest[dir]
    if r == nil or len == 0 then return end
    local hi = (seq + len) % SEQ_MOD
    if r.frame == pinfo.number then
        r.hi, r.last = hi, (hi + r.p.need - r.here) % SEQ_MOD
        return
    end
    if r.last == nil or (seq - r.last) % SEQ_MOD < SEQ_MOD / 2 then
        conn.rest[dir] = nil
        return
    end
    local m = records[r.p.key]
    if m and m.incomplete then rests[pinfo.number] = (r.last - seq) % SEQ_MOD end
    local ahead = (hi - r.hi) % SEQ_MOD
    if ahead == 0 or ahead >= SEQ_MOD / 2 then return end
    r.hi = hi
    r.p.t_done = now
    r.p.have = (r.p.have or 0) + ahead
    if m and m.incomplete then m.t_done = now end
end

-- The connection ended (its FIN or RST in the first pass; or, seen from a later pass, the
-- capture) with a frame of direction `dir` still unfinished: as the default engine has
-- it, a decode error where the frame began, and nothing else (its request is not opened,
-- its answer answers nothing). Returns its record.
function Rest.ended(conn, dir)
    local p = conn.pending[dir]
    if p == nil or p.peek == nil then return nil end  -- (a callback frame's, not a command's)
    conn.pending[dir] = nil
    if conn.rest then conn.rest[dir] = nil end
    if records[p.key] then return records[p.key] end
    local m = {
        ended = true, incomplete = true, frame = p.frame, t = p.t, t_done = p.t_done or p.now,
        reason = string.format("connection ended inside a frame (%d of %s bytes)",
            p.have or 0, tostring(p.need or "?")),
    }
    records[p.key] = m
    incomplete[p.frame] = incomplete[p.frame] or {}
    table.insert(incomplete[p.frame], m)
    return m
end

-- Whether the ACK of the frame being dissected acknowledges bytes of direction `dir` past
-- the last one captured (they were lost); nil when not known (no tree in the first pass,
-- or bytes of the direction were not captured before).
function Rest.acked_past(conn, dir)
    local ack = TCP.ack()
    local s = conn.streams and conn.streams[dir]
    if ack == nil or s == nil or s.base == nil or s.lossy then return nil end
    local ahead = (ack.value - (s.base + s.top)) % SEQ_MOD
    return ahead > 0 and ahead < SEQ_MOD / 2
end

-- What the captured head of a frame tells when the rest of it never arrives.
local function peek_frame(tvb, off)
    local avail = tvb:len() - off
    local h = {}
    if avail < 5 then return h end
    h.cls = tvb(off + 4, 1):uint()
    if h.cls == 0x53 then h.cmd = 0x43 end
    if h.cls ~= 0x4F or avail < 14 then return h end
    h.objid = tvb(off + 5, 8):bytes():tohex()
    h.cmd = tvb(off + 13, 1):uint()
    local name_at = (h.cmd == 0x41 and 14) or (h.cmd == 0x47 and 38) or nil
    if h.cmd == 0x49 and avail >= 18 then h.dispid = tvb(off + 14, 4):int() end
    if name_at and avail >= name_at + 4 then
        local n = tvb(off + name_at, 4):uint()
        if n > 0 and avail >= name_at + 4 + n then h.method = tvb:raw(off + name_at + 4, n) end
    end
    return h
end

-- A frame whose bytes were not all captured (lost segment, snaplen) still took its place in
-- the dialog: its request waits for its answer, its answer closes a request (§5.2). It is
-- known to be incomplete once the peer speaks, or its direction goes on with other bytes.
local function abandon_frame(conn, as, p)
    local h = p.peek
    if h.cls == nil or records[p.key] then return end
    local m = {
        cls = h.cls, cmd = h.cmd, objid = h.objid, dispid = h.dispid, method = h.method,
        frame = p.frame, t = p.t, t_done = p.t_done or p.t, sender = p.sender,
        incomplete = true, request = h.cls == 0x53 or h.cls == 0x4F or h.cls == 0x4B,
    }
    if m.request then
        if m.objid and m.sender then
            local target = object_entry(as, other_side(m.sender), m.objid)
            m.objname, m.objpath = object_label(target), object_path(target)
            if m.cmd == 0x49 and m.dispid then
                m.method = dispid_name(as, other_side(m.sender), m.objid, m.dispid)
            end
        end
        callback_task(conn, as)
        apply_request(conn, as, m)
    else
        pair_answer(as, m)
    end
    records[p.key] = m
    incomplete[p.frame] = incomplete[p.frame] or {}
    table.insert(incomplete[p.frame], m)
end

-- The protocol item of a frame not completely captured, with what is known of it.
local function show_incomplete(item, conn, m)
    if m.ended then
        item:add(FA.first_byte, us_nstime(exact_time(m.t))):set_generated()
        item:add(FA.last_byte, us_nstime(exact_time(m.t_done))):set_generated()
        add_process_id(item, conn.task)
        item:add_proto_expert_info(EA.malformed, m.reason)
        item:set_text("JobScheduler Object Server [" .. m.reason .. "]")
        return
    end
    item:add(FA.class, m.cls):set_generated()
    item:add(FA.last_byte, us_nstime(exact_time(m.t_done))):set_generated()
    if m.sender then item:add(FA.sender, m.sender):set_generated() end
    if m.cmd and m.cls ~= 0x53 then item:add(FA.command, m.cmd):set_generated() end
    if m.dispid then item:add(FA.dispid, m.dispid):set_generated() end
    if m.objname then item:add(FA.object_name, TEXT.field(m.objname)):set_generated() end
    local what = TEXT.field(m.method) or COMMAND_NAMES[m.cmd or -1]
    if not m.request and m.req then
        what = TEXT.field(m.req.method) or COMMAND_NAMES[m.req.cmd or -1]
    end
    if what then item:add(FA.method, what):set_generated() end
    add_api_links(item, conn, m)
    local arrow = ARROWS[m.sender] or ""
    local kind = m.request and "request" or "answer"
    item:set_text("JobScheduler Object Server: " .. arrow .. kind .. " " .. tostring(what or "")
        .. " [frame not completely captured]")
end

local CREATE_INSTANCE_HEAD = "\0\0\0\59S\0\0\0\0\0\0\0\0C"
local API_CLASSES = {
    [0x53] = true, [0x4F] = true, [0x4B] = true, [0x41] = true, [0x45] = true, [0x4E] = true,
}

local function dissect_api(tvb, pinfo, tree)
    local len = tvb:len()
    if len == 0 then return 0 end
    local conn, src = conn_of(pinfo)
    if TCP.earlier(conn, pinfo) then return 0 end
    -- a port-table hit on a connection that does not carry this protocol: let others try
    if conn.channel == nil and len >= 5 then
        local l = tvb(0, 4):uint()
        if l == 0 or l > MAX_FRAME or not API_CLASSES[tvb(4, 1):uint()] then return 0 end
    end
    last_main_frame = pinfo.number
    if pinfo.visited then Stream.learn_exact(pinfo) tasks.whole = true end
    conn.data_seen = true  -- bytes flowed: the connection was accepted (status_of)
    local as = api_state(conn)
    local first_pass = not pinfo.visited
    local now = frame_us(pinfo)
    local dir = direction(pinfo)
    local cont, stream, base
    if first_pass then
        stream = Stream.of(conn, dir)
        base = Stream.base(stream, tvb)
        -- the peer speaks: a frame of the other direction still pending was complete on
        -- the wire, so its missing bytes were not captured; unless this segment's ACK (when
        -- a tree tells it) shows the peer got no byte past those captured: then nothing
        -- was lost, the frame is longer than it was meant to be (a corrupt length), and
        -- waits for its bytes as jsdissect's decoder waits
        local other = conn.pending[3 - dir]
        if other and Rest.acked_past(conn, 3 - dir) ~= false then
            abandon_frame(conn, as, other)
            conn.pending[3 - dir] = nil
        end
        cont = conn.pending[dir]
        conn.pending[dir] = nil
        local continued = cont and len >= (cont.need or 0)
            and tvb:raw(0, math.min(len, #cont.head)) == cont.head
        if cont and not continued then
            abandon_frame(conn, as, cont)
            cont = nil
        end
        frame_conn[pinfo.number] = conn
        if conn.first == nil then conn.first, conn.first_frame = now, pinfo.number end
    end
    local off = 0
    local rest = rests[pinfo.number]
    if rest then
        off = math.min(rest, len)
        local item = tree:add(p_api, tvb(0, off))
        item:add(FA.segment, tvb(0, off))
        item:set_text("JobScheduler Object Server [rest of a frame not completely captured]")
        add_process_id(item, conn.task)
        set_column(pinfo, "JS-API", "[rest of a frame not completely captured]")
    end
    while off < len do
        -- after a frame start announcing a length past the bound: bytes read past (a frame
        -- over the bound), or none decoded any more (framing lost), as jsdissect
        local unframed_key = message_key(pinfo, tvb, off) .. ":unframed"
        local u = first_pass and as.unframed and as.unframed[dir]
        if u then
            local used = math.min(u.left or len, len - off)
            if u.left then u.left = u.left - used end
            if u.left == 0 then as.unframed[dir] = nil end
            records[unframed_key] = { used = used, lost = u.left == nil }
        end
        local skipped = records[unframed_key]
        if skipped then
            local item = tree:add(p_api, tvb(off, skipped.used))
            item:add(FA.segment, tvb(off, skipped.used))
            local what = skipped.lost and "not decoded: framing lost"
                or "rest of a frame over the sanity bound, not decoded"
            item:set_text("JobScheduler Object Server [" .. what .. "]")
            add_process_id(item, conn.task)
            set_column(pinfo, "JS-API", "[" .. what .. "]")
            off = off + skipped.used
            if off >= len then break end
        end
        local avail = len - off
        local flen = avail >= 4 and tvb(off, 4):uint() or nil
        local bad
        if flen ~= nil and (flen == 0 or flen > MAX_FRAME) then
            -- no peer sends 0 or more than 1000 MiB (§5.1, C++ max_message_size): no frame
            -- length, framing is lost; up to that, a frame too long to hold is read past.
            -- (Where bytes of the direction were not captured, it may be no frame start:
            -- the next segment is tried.)
            local lost = flen == 0 or flen > 1048576000
            bad = "announced length " .. flen .. " (sanity bound " .. MAX_FRAME .. ")"
            if first_pass and not stream.lossy and tvb:reported_len() == len then
                as.unframed = as.unframed or {}
                as.unframed[dir] = { left = not lost and 4 + flen - avail or nil }
            end
        elseif avail >= 5 and not API_CLASSES[tvb(off + 4, 1):uint()] then
            bad = string.format("message class 0x%02x", tvb(off + 4, 1):uint())
        end
        if bad then
            -- not at a frame start (bytes lost before): skip to the next segment
            local item = tree:add(p_api, tvb(off))
            item:add(FA.segment, tvb(off))
            local expert_field = (flen and flen > MAX_FRAME) and EA.too_long or EA.malformed
            item:add_proto_expert_info(expert_field, "Not a frame start: " .. bad)
            add_process_id(item, conn.task)
            set_column(pinfo, "JS-API", "malformed: " .. bad)
            if first_pass then Stream.moved(stream, tvb, base, len, pinfo.number) end
            return len
        end
        if flen == nil or avail < 4 + flen then
            local item = tree:add(p_api, tvb(off))
            item:add(FA.segment, tvb(off))
            local key = message_key(pinfo, tvb, off)
            local truncated = tvb:reported_len() > len or not pinfo.can_desegment
                or pinfo.can_desegment == 0
            if first_pass then
                local peek = peek_frame(tvb, off)
                local pending = {
                    t = Stream.sent(stream, base, cont, off, now), frame = pinfo.number,
                    key = key, peek = peek, have = avail, now = now,
                    head = tvb:raw(off, math.min(avail, 16)), need = flen and (4 + flen),
                    sender = peek.cls and sender_of(conn, as, pinfo, src, pinfo.src_port,
                        peek.cls, peek.cmd),
                }
                Rest.watch(conn, dir, pending, tvb:reported_len() - off, pinfo.number)
                if truncated then
                    abandon_frame(conn, as, pending)
                else
                    conn.pending[dir] = pending
                end
            end
            local rec = records[key]
            local p = conn.pending[dir]
            if rec == nil and not first_pass and p and p.key == key then
                rec = Rest.ended(conn, dir)  -- the capture ended inside it
            end
            if rec and rec.incomplete then show_incomplete(item, conn, rec) end
            if rec == nil or not rec.incomplete then add_process_id(item, conn.task) end
            if truncated then
                item:add_proto_expert_info(EA.truncated, "Frame of " .. tostring(flen)
                    .. " bytes, " .. math.max(avail - 4, 0) .. " captured here")
                set_column(pinfo, "JS-API", "[frame not completely captured]")
                if first_pass then Stream.moved(stream, tvb, base, len, pinfo.number) end
                return len
            end
            if rec == nil then item:set_text("JobScheduler Object Server [segment of a frame]") end
            pinfo.desegment_offset = off
            pinfo.desegment_len = flen and (4 + flen - avail) or DESEGMENT_ONE_MORE_SEGMENT
            set_column(pinfo, "JS-API", "[segment of a frame]")
            if first_pass then Stream.moved(stream, tvb, base, off, pinfo.number) end
            return len
        end
        local info = dissect_api_frame(tvb(off, 4 + flen):tvb(), pinfo, tree, conn,
            message_key(pinfo, tvb, off), Stream.sent(stream, base, cont, off, now),
            Stream.done(stream, base, off, 4 + flen, now), src, pinfo.src_port)
        set_column(pinfo, "JS-API", info)
        off = off + 4 + flen
    end
    if first_pass then Stream.moved(stream, tvb, base, len, pinfo.number) end
    return len
end

p_api.dissector = dissect_api

---------------------------------------------------------------------------------------------
-- Heuristics (preference "Heuristic detection")
---------------------------------------------------------------------------------------------

-- §12 mid-stream pickup: a complete object request (call by name, GetIDsOfNames or
-- Invoke) that parses exactly; strict, so other protocols stay untouched.
local function looks_like_request(tvb, pinfo)
    if tvb:len() < 14 or tvb(4, 1):uint() ~= 0x4F then return false end
    local cmd = tvb(13, 1):uint()
    if cmd ~= 0x41 and cmd ~= 0x47 and cmd ~= 0x49 then return false end
    local flen = tvb(0, 4):uint()
    if flen < 10 or flen > MAX_FRAME then return false end
    if tvb(5, 8):bytes():tohex() == "0000000000000000" then return false end
    if tvb:len() < 4 + flen then
        -- a first frame that spans segments (a construct, a log call): its head is enough
        -- on a port of the callback range the default engine reads (59000-59999, §2), as
        -- its §12 test takes it; elsewhere other protocols stay untouched
        local function ranged(port) return port >= 59000 and port <= 59999 end
        return ranged(pinfo.src_port) or ranged(pinfo.dst_port)
    end
    local m = { cls = 0x4F, sender = cmd == 0x41 and CONTROLLER or TASK_SERVER }
    local probe = { exports = { {}, {} }, dispids = {} }
    local ok, err = pcall(dissect_request, tvb(0, 4 + flen):tvb(), NULL_TREE, m, probe)
    if not ok then
        if getmetatable(err) ~= Malformed then error(err, 0) end
        return false
    end
    return m.method == nil or m.method:match("^[%w_%?%(%)%.%-]+$") ~= nil
end

-- §12 mid-stream pickup of a dialog whose sides the frame does not tell: a Release (§5.9,
-- sent by both sides: `O`, the object id, `R`, nothing else), a keep-alive `K` (§8), an
-- `A` answer that is nothing but `A`, or an HRESULT and a VARIANT filling it exactly, or
-- S_OK and any body filling the segment (answers to calls not captured, §5.10), or an `E` answer whose strings fill it exactly and
-- are its §5.11 keys. A capture that begins at the end of a task (releases only) or with
-- the answer to a call it did not get is still a callback channel, as the default engine
-- takes it.
local function looks_like_sideless(tvb)
    local len = tvb:len()
    if len < 5 then return false end
    local flen, cls = tvb(0, 4):uint(), tvb(4, 1):uint()
    if cls == 0x4F then
        return flen == 10 and len >= 14 and tvb(13, 1):uint() == 0x52
            and tvb(5, 8):bytes():tohex() ~= "0000000000000000"
    end
    if cls == 0x4B or (cls == 0x41 and flen == 1) then return flen == 1 end
    if cls == 0x41 then
        if flen < 7 or flen > MAX_FRAME or len < 4 + flen or tvb(5, 4):uint() >= 0x80000000 then
            return false
        end
        local ok, size = pcall(dissect_variant, tvb(0, 4 + flen):tvb(), 9, NULL_TREE, 0)
        -- else DISPIDs or objrefs, say: S_OK or S_FALSE in a segment that is this frame
        return (ok and 9 + size == 4 + flen) or (len == 4 + flen and tvb(5, 4):uint() <= 1)
    end
    if cls ~= 0x45 or flen < 5 or flen > MAX_FRAME or len < 4 + flen then return false end
    local pos, keys = 5, 0
    while pos < 4 + flen do
        if pos + 4 > 4 + flen then return false end
        local n = tvb(pos, 4):uint()
        if n > 4 + flen - pos - 4 then return false end
        local key = tvb:raw(pos + 4, n):match("^(%a+)=")
        if key ~= "name" and key ~= "code" and key ~= "what" then return false end
        pos, keys = pos + 4 + n, keys + 1
    end
    return keys > 0
end

-- The callback channel: its first message, CreateInstance of the remote module instance
-- server (§7.4, `00 00 00 3b 53 …`), or a message picked up mid-stream.
local function heur_api(tvb, pinfo, tree)
    if not p_cmd.prefs.heuristic or tvb:len() < 5 then return false end
    local controller_sends
    if tvb:len() >= 14 and tvb:raw(0, 14) == CREATE_INSTANCE_HEAD then
        controller_sends = true
    elseif looks_like_request(tvb, pinfo) then
        controller_sends = tvb(13, 1):uint() == 0x41
    elseif not looks_like_sideless(tvb) then
        return false
    end
    local conn = conn_of(pinfo)
    if TCP.earlier(conn, pinfo) then return false end
    local as = api_state(conn)
    if as.controller == nil and controller_sends ~= nil then
        if controller_sends then
            as.controller = { addr = tostring(pinfo.src), port = pinfo.src_port }
        else
            as.controller = { addr = tostring(pinfo.dst), port = pinfo.dst_port }
        end
    end
    pinfo.conversation = p_api
    dissect_api(tvb, pinfo, tree)
    return true
end

-- The command channel on another port (§12): client bytes start with `<?xml…?>
-- <remote_scheduler.` or `<remote_scheduler.`, possibly after keep-alive spaces.
local function heur_cmd(tvb, pinfo, tree)
    if not p_cmd.prefs.heuristic then return false end
    local body = tvb:raw(0, math.min(tvb:len(), 256)):match("^[ \0]*(.*)$")
    local starts = body:sub(1, 18) == "<remote_scheduler."
        or (body:sub(1, 5) == "<?xml" and body:find("?><remote_scheduler.", 1, true) ~= nil)
    if not starts then return false end
    local conn = conn_of(pinfo)
    if TCP.earlier(conn, pinfo) then return false end
    local cs = cmd_state(conn)
    cs.server = cs.server or conn.server
        or { addr = tostring(pinfo.dst), port = pinfo.dst_port }
    pinfo.conversation = p_cmd
    dissect_cmd(tvb, pinfo, tree)
    return true
end

---------------------------------------------------------------------------------------------
-- Postdissector: TCP tracking (first pass), and the task key on frames whose bytes belong
-- to a message reassembled in another frame (DESIGN "Wireshark plugin")
---------------------------------------------------------------------------------------------

local function post_dissector(tvb, pinfo, tree)
    local now = not pinfo.visited and frame_us(pinfo) or nil  -- first pass only
    if not now then tasks.whole = true end
    -- the capture ends with its last packet, whatever that carries
    if now and (capture_end == nil or now > capture_end) then capture_end = now end
    if pinfo.port_type ~= PT_TCP then return end
    if now then
        track_tcp(tvb, pinfo, now)
        local c = frame_conn[pinfo.number]
        if c and c.channel == "api" and c.seg_frame == pinfo.number and c.seg_len then
            Rest.track(c, pinfo, c.seg_seq, c.seg_len, now)
        elseif c and c.channel == "cmd" and c.seg_frame == pinfo.number
            and (c.seg_len or 0) > 0 then
            c.next_seq = c.next_seq or {}
            local dir, finish = direction(pinfo), (c.seg_seq + c.seg_len) % SEQ_MOD
            local last = c.next_seq[dir]
            if last == nil or (finish - last) % SEQ_MOD < SEQ_MOD / 2 then
                c.next_seq[dir] = finish
            end
        end
        -- when each byte was first captured (Stream): of this protocol's connections, and
        -- of those to its ports whose first bytes TCP holds back (reassembled out of order)
        if c and c.seg_frame == pinfo.number and (c.seg_len or 0) > 0
            and (c.channel or interesting_port(pinfo.src_port)
                or interesting_port(pinfo.dst_port))
            and not (c.cmd and c.cmd.foreign) then
            local captured = math.max(0, math.min(c.seg_len, tvb:len() - c.seg_at))
            Stream.note(Stream.of(c, direction(pinfo)), pinfo.number, c.seg_seq, c.seg_at,
                captured, c.seg_len, now)
        end
        if c and c.channel == "api" and c.end_frame == pinfo.number then
            -- no more bytes in the direction of the FIN, nor in either after an RST
            for d = 1, 2 do
                if c.end_rst or d == direction(pinfo) then Rest.ended(c, d) end
            end
        end
    end
    local conn = frame_conn[pinfo.number]
    if conn ~= nil then
        if conn.stream == nil then
            local fi = TCP.stream()
            if fi then conn.stream = fi.value end
        end
        -- the first pass kept the exact time, or else the double's: then learn the exact
        -- one for that (when kept times are exact, a double's value may be another frame's
        -- exact time, and must not be mapped)
        Stream.learn_exact(pinfo, now)
    end
    if last_main_frame == pinfo.number then return end
    if conn == nil or conn.channel == nil then return end
    local tl = TCP.len()
    if tl == nil or tl.value == 0 then return end
    if not now and conn.channel == "api" then  -- later pass: the capture ended inside it
        for d = 1, 2 do
            local p = conn.pending[d]
            if p and p.frame == pinfo.number then Rest.ended(conn, d) end
        end
    end
    if incomplete[pinfo.number] then
        -- a frame of the dialog whose other bytes were never captured (TCP does not hand
        -- this segment to the dissector again)
        for _, m in ipairs(incomplete[pinfo.number]) do
            show_incomplete(tree:add(p_api, tvb(0, 0)), conn, m)
        end
        return
    end
    local proto = conn.channel == "api" and p_api or p_cmd
    local item = tree:add(proto, tvb(0, 0))
    item:set_text((conn.channel == "api" and "JobScheduler Object Server"
        or "JobScheduler Remote Execution") .. " [TCP segment of a message]")
    add_process_id(item, current_task(conn))
end

p_post.dissector = post_dissector

---------------------------------------------------------------------------------------------
-- The task table (DESIGN "The task table contract"): Statistics menu and tshark output
---------------------------------------------------------------------------------------------

local TASK_COLUMNS = {
    "process_id", "pid", "job", "task_id", "kind", "controller", "remote", "cmd_conn",
    "callback_conn", "cmd_port", "callback_port", "callback_src_port", "cmd_syn",
    "cmd_established", "start_sent", "start_answered", "callback_syn", "callback_established",
    "begin_sent", "begin_answered", "release_answered", "callback_closed", "close_sent",
    "close_answered", "connect_ms", "spawn_ms", "callback_delay_ms", "startup_ms", "run_ms",
    "close_ms", "total_ms", "steps", "exit_code", "signal", "status", "error", "log_lines",
    "notes",
}
local TIME_COLUMNS = {
    "cmd_syn", "cmd_established", "start_sent", "start_answered", "callback_syn",
    "callback_established", "begin_sent", "begin_answered", "release_answered",
    "callback_closed", "close_sent", "close_answered",
}
local IS_TIME = {}
for _, c in ipairs(TIME_COLUMNS) do IS_TIME[c] = true end
local DURATIONS = {
    connect_ms = { "cmd_syn", "cmd_established" },
    spawn_ms = { "start_sent", "start_answered" },
    callback_delay_ms = { "start_sent", "callback_syn" },
    startup_ms = { "start_sent", "begin_answered" },
    run_ms = { "begin_answered", "release_answered" },
    close_ms = { "close_sent", "close_answered" },
}

-- The task table's rows. In a block of its own: the main chunk is at Lua's limit of 200
-- local variables, and only task_rows is needed past it.
local task_rows
do
    -- DESIGN "Matching" as the default engine notes it: a task that had more than one callback
    -- to choose from (in its window, to its controller address and port, or to its port from
    -- its remote, not taken by an earlier task) says which others. Known once the whole file
    -- was read: every task waits in start order, all first for the exact address. Gives
    -- the notes (a list per task) and the window end of every task that waited.
    local function candidate_notes()
        local notes, taken, waiting = {}, {}, {}
        for _, t in ipairs(tasks) do
            if t.start_seen and not t.start_failed then waiting[#waiting + 1] = t end
        end
        table.sort(waiting, function(a, b)
            if a.start_sent ~= b.start_sent then return a.start_sent < b.start_sent end
            return (a.cmd_port or 0) < (b.cmd_port or 0)
        end)
        -- each window ends at the next start for the same controller address and port, as
        -- the default engine sets them all (the dissection ended only the open ones)
        local next_start, last_of, window_end = {}, {}, {}
        for _, t in ipairs(waiting) do
            local target = tostring(t.expected_ip) .. "|" .. tostring(t.callback_port)
            if last_of[target] then next_start[last_of[target]] = t.start_sent end
            last_of[target] = t
        end
        for _, t in ipairs(waiting) do
            local ends = t.start_sent + CALLBACK_TIMEOUT_US
            if next_start[t] and next_start[t] < ends then ends = next_start[t] end
            if t.cmd and t.cmd.closed and t.cmd.closed < ends then ends = t.cmd.closed end
            window_end[t] = ends
        end
        local entries = {}
        for _, c in ipairs(candidates) do
            -- a callback, or a connection to an announced port that carried nothing (refused,
            -- unanswered): what the default engine's matching considers
            if c.channel == "api" or (c.channel == nil and c.syn ~= nil and not c.carried) then
                local target = (c.api and c.api.controller) or c.server or guessed_controller(c)
                entries[#entries + 1] = { conn = c, when = c.syn or c.first, target = target,
                    source = peer_of(c, target) }
            end
        end
        table.sort(entries, function(a, b)
            if a.when ~= b.when then return a.when < b.when end
            return a.source.port < b.source.port
        end)
        -- per controller port, in that order: a task looks only at those of its window
        local by_port = {}
        for _, e in ipairs(entries) do
            by_port[e.target.port] = by_port[e.target.port] or {}
            table.insert(by_port[e.target.port], e)
        end
        local function in_window(t)
            local list = by_port[t.callback_port] or {}
            local lo, hi = 1, #list + 1  -- the first entry at or after the start
            while lo < hi do
                local mid = math.floor((lo + hi) / 2)
                if list[mid].when < t.start_sent then lo = mid + 1 else hi = mid end
            end
            local out = {}
            for i = lo, #list do
                if list[i].when > window_end[t] then break end
                out[#out + 1] = list[i]
            end
            return out
        end
        for pass = 1, 2 do
            for _, t in ipairs(waiting) do
                local cb = t.callback
                if cb and not taken[cb] and (pass == 1) == not t.translated then
                    -- a note names 5 other candidates at most, as correlate's (a port
                    -- scan in the window would fill it): one more tells there are more
                    local noted, eligible = 5, {}
                    for _, e in ipairs(in_window(t)) do
                        if #eligible > noted + 1 then break end
                        if e.when >= t.start_sent and e.when <= window_end[t]
                            and not taken[e.conn]
                            and e.target.port == t.callback_port
                            and ((pass == 1 and e.target.addr == t.expected_ip)
                                or (pass == 2 and e.source.addr == remote_ip(t))) then
                            eligible[#eligible + 1] = e.conn
                        end
                    end
                    if #eligible > 1 and eligible[1] == cb then
                        local others = {}
                        for i = 2, math.min(#eligible, noted + 1) do
                            others[i - 1] = tostring(eligible[i].stream)
                        end
                        local also = table.concat(others, ", ")
                        if #eligible > noted + 1 then
                            notes[t] = { "earliest of over " .. (noted + 1)
                                .. " candidate callbacks (also " .. also .. ", …)" }
                        else
                            notes[t] = { "earliest of " .. #eligible
                                .. " candidate callbacks (also " .. also .. ")" }
                        end
                    end
                    taken[cb] = true
                end
            end
        end
        return notes, window_end
    end

    local function task_row(t, matching_notes)
        local cb, cmd = t.callback, t.cmd
        local r = {
            process_id = t.process_id, pid = t.pid, job = t.job, task_id = t.task_id,
            controller = t.controller, remote = t.remote, cmd_port = t.cmd_port,
            callback_port = t.callback_port, start_sent = t.start_sent,
            start_answered = t.start_answered, begin_sent = t.begin_sent,
            begin_answered = t.begin_answered, release_answered = t.release_answered,
            close_sent = t.close_sent, close_answered = t.close_answered,
            exit_code = t.exit_code, signal = t.signal, status = status_of(t),
        }
        if t.start_seen then r.kind = t.kind end
        if cmd then
            r.cmd_conn = cmd.stream
            r.cmd_syn = cmd.syn
            r.cmd_established = cmd.established or cmd.synack
        end
        if cb then
            r.callback_conn = cb.stream
            r.callback_syn = cb.syn
            r.callback_established = cb.established or cb.synack
            r.callback_closed = cb.closed
            local controller = cb.api and cb.api.controller
            if t.guessed and controller then  -- the sides were told after the task was made
                r.controller, r.callback_port = controller.addr, controller.port
            end
            controller = controller or t.guessed
            if cb.client then
                r.callback_src_port = cb.client.port
            elseif controller then
                r.callback_src_port = peer_of(cb, controller).port
            end
            r.steps = cb.api and cb.api.steps or 0
            r.log_lines = t.log_lines or 0
        elseif NO_CALLBACK[r.status] then
            r.steps, r.log_lines = 0, 0  -- no callback ever came: nothing to count, and known
        end
        for _, c in ipairs(TIME_COLUMNS) do r[c] = exact_time(r[c]) end
        for name, pair in pairs(DURATIONS) do
            local a, b = r[pair[1]], r[pair[2]]
            if a and b then r[name] = (b - a) / 1000 end
        end
        local first, last
        for _, c in ipairs(TIME_COLUMNS) do
            local v = r[c]
            if v then
                if first == nil or v < first then first = v end
                if last == nil or v > last then last = v end
            end
        end
        if r.cmd_syn and r.close_answered then
            r.total_ms = (r.close_answered - r.cmd_syn) / 1000
        elseif first then
            r.total_ms = (last - first) / 1000
        end
        local best
        for _, e in ipairs(t.errors) do
            if best == nil or e.when < best.when then best = e end
        end
        if best then r.error = best.text end
        local notes = {}  -- the matching's first, as the default engine gives them
        for _, note in ipairs(matching_notes or {}) do notes[#notes + 1] = note end
        for _, note in ipairs(t.notes) do notes[#notes + 1] = note end
        if #notes > 0 then r.notes = table.concat(notes, "; ") end
        r.sort_time = first or 0
        r.sort_conn = (cmd and cmd.id) or (cb and cb.id) or 0
        return r
    end

    function task_rows()
        -- A connection to an address and port a start announced before its SYN, that
        -- carried nothing and no task took (refused, unanswered, too late): a partial row of
        -- its own, as the default engine gives it. Made here, not kept: the table is drawn
        -- more than once.
        local all, announced = {}, {}
        for i, t in ipairs(tasks) do
            all[i] = t
            if t.start_seen and t.callback_port then
                for _, addr in ipairs({ t.controller, t.expected_ip }) do
                    local key = addr .. "|" .. t.callback_port
                    if announced[key] == nil or t.start_sent < announced[key] then
                        announced[key] = t.start_sent
                    end
                end
            end
        end
        for _, c in ipairs(candidates) do
            local since = c.server and announced[c.server.addr .. "|" .. c.server.port]
            if c.task == nil and c.channel == nil and c.syn ~= nil and not c.carried
                and since ~= nil and since <= c.syn then
                all[#all + 1] = { controller = c.server.addr, callback_port = c.server.port,
                    callback = c, errors = {}, notes = {} }
            end
        end
        local notes, window_end = candidate_notes()

        -- DESIGN "Matching" keeps a callback whose SYN came past its task's window a row of
        -- its own (a slow start: the controller gave up, Z-REMOTE-118); as the default engine
        -- does, both rows say so, so that `callback-missing` does not read as "never came".
        -- The task is the nearest earlier start, without a callback, for the same address
        -- and port.
        local function note_late_callbacks()
            local waiting = {}
            for _, t in ipairs(tasks) do
                if t.callback == nil and window_end[t] then
                    local key = tostring(t.expected_ip) .. "|" .. tostring(t.callback_port)
                    waiting[key] = waiting[key] or {}
                    waiting[key][#waiting[key] + 1] = t
                end
            end
            local function add(t, note)
                notes[t] = notes[t] or {}
                notes[t][#notes[t] + 1] = note
            end
            for _, row in ipairs(all) do
                local cb = row.callback
                if row.cmd == nil and cb and cb.syn then
                    -- the row's controller and port, as task_row gives them
                    local c = row.guessed and cb.api and cb.api.controller
                    local key = tostring(c and c.addr or row.controller) .. "|"
                        .. tostring(c and c.port or row.callback_port)
                    local task
                    for _, t in ipairs(waiting[key] or {}) do
                        if t.start_sent < cb.syn
                            and (task == nil or t.start_sent >= task.start_sent) then
                            task = t
                        end
                    end
                    if task and cb.syn > window_end[task] then
                        local late = string.format("%.3f s after the start",
                            (exact_time(cb.syn) - exact_time(task.start_sent)) / 1e6)
                        add(task, "callback " .. tostring(cb.stream) .. " came " .. late
                            .. ": too late")
                        add(row, "too late for task "
                            .. tostring(task.process_id or task.cmd.stream) .. " (" .. late .. ")")
                    end
                end
            end
        end
        note_late_callbacks()

        local rows = {}
        for i, t in ipairs(all) do rows[i] = task_row(t, notes[t]) end
        table.sort(rows, function(a, b)
            if a.sort_time ~= b.sort_time then return a.sort_time < b.sort_time end
            return a.sort_conn < b.sort_conn
        end)
        return rows
    end
end

local function ms_text(v)
    local s = string.format("%.3f", v):gsub("0+$", "")
    if s:sub(-1) == "." then s = s .. "0" end
    return s
end

local function cell(name, v)
    if v == nil then return "" end
    if IS_TIME[name] then return iso_us(v) end
    if DURATIONS[name] or name == "total_ms" then return ms_text(v) end
    if type(v) == "number" then
        -- a double is exact up to 2^53; past it the capture's digits are not known here
        if v ~= math.floor(v) or math.abs(v) >= 2^53 then return "" end
        return string.format("%d", v)
    end
    return tostring(v)
end

local function csv_field(s)
    if s:find('[,"\r\n]') then return '"' .. s:gsub('"', '""') .. '"' end
    return s
end

local function task_table_csv()
    local lines = { table.concat(TASK_COLUMNS, ",") }
    for _, r in ipairs(task_rows()) do
        local cells = {}
        for i, c in ipairs(TASK_COLUMNS) do cells[i] = csv_field(cell(c, r[c])) end
        lines[#lines + 1] = table.concat(cells, ",")
    end
    return table.concat(lines, "\n") .. "\n"
end

-- The readable subset `jsdissect tasks` prints, aligned, times as time of day.
local SHOWN = {
    "process_id", "kind", "remote", "callback_port", "start_sent", "spawn_ms",
    "callback_delay_ms", "startup_ms", "run_ms", "close_ms", "total_ms", "steps", "exit_code",
    "log_lines", "status", "error",
}

local function task_table_text()
    local rows = task_rows()
    local lines = { SHOWN }
    for _, r in ipairs(rows) do
        local line = {}
        for i, c in ipairs(SHOWN) do
            local v = cell(c, r[c])
            if IS_TIME[c] and v ~= "" then v = v:sub(12, -2) end
            line[i] = v
        end
        lines[#lines + 1] = line
    end
    local widths = {}
    for _, line in ipairs(lines) do
        for i, v in ipairs(line) do
            if (widths[i] or 0) < #v then widths[i] = #v end
        end
    end
    local out = {}
    for _, line in ipairs(lines) do
        local parts = {}
        for i, v in ipairs(line) do parts[i] = v .. string.rep(" ", widths[i] - #v) end
        out[#out + 1] = (table.concat(parts, "  "):gsub("%s+$", ""))
    end
    return table.concat(out, "\n") .. "\n\n" .. #rows .. " task(s)\n"
end

-- tshark: a tap whose draw() runs once at the end of the run (after the second pass with
-- -2) prints the table when a preference asks for it.
local table_listener

local function write_task_table()
    if last_main_frame ~= nil and capture_end == nil then
        -- the protocol was dissected, but the postdissector never ran: disabled by hand
        io.stderr:write("jobscheduler.lua: 'JobScheduler TCP tracking' (jobscheduler_tracking)"
            .. " is disabled: the task table lacks handshakes, refusals, closes and statuses\n")
    end
    local path = p_cmd.prefs.task_table_file
    if path and path ~= "" then
        local f, err = io.open(path, "w")
        if f then
            f:write(task_table_csv())
            f:close()
        else  -- said, not swallowed: nobody would know why the table is missing
            io.stderr:write("jobscheduler.lua: task table not written: " .. tostring(err) .. "\n")
        end
    elseif p_cmd.prefs.task_table then
        io.stdout:write(task_table_csv())
        io.stdout:flush()
    end
end

local function ensure_table_listener()
    local wanted = p_cmd.prefs.task_table or (p_cmd.prefs.task_table_file or "") ~= ""
    if wanted and table_listener == nil then
        table_listener = Listener.new("frame", nil)
        table_listener.draw = write_task_table
    end
end

-- Wireshark: Statistics → JobScheduler → Remote tasks.
local function open_task_window()
    local win = TextWindow.new("JobScheduler remote tasks")
    local tap = Listener.new("frame", "jobscheduler || jobscheduler_api")
    local function render() win:set(task_table_text()) end
    tap.draw = render
    win:set_atclose(function() tap:remove() end)
    if copy_to_clipboard then
        win:add_button("Copy as CSV", function() copy_to_clipboard(task_table_csv()) end)
    end
    render()
    if retap_packets then retap_packets() end
end

---------------------------------------------------------------------------------------------
-- Registration
---------------------------------------------------------------------------------------------

function p_cmd.init()
    for port in pairs(registered) do
        pcall(function() tcp_port_table:remove(port, p_api) end)
    end
    registered = {}
    reset_state()
    apply_port_pref()
end

function p_cmd.prefs_changed()
    apply_port_pref()
    ensure_table_listener()
end

apply_port_pref()
-- Decode As… (tcp.port) for a callback port whose start command was not captured
tcp_port_table:add_for_decode_as(p_api)
p_api:register_heuristic("tcp", heur_api)
p_cmd:register_heuristic("tcp", heur_cmd)
register_postdissector(p_post)

if gui_enabled and gui_enabled() and register_menu then
    pcall(register_menu, "JobScheduler/Remote tasks", open_task_window, MENU_STAT_UNSORTED)
end
