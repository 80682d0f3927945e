#!/usr/bin/env escript
%%! -noshell +A 4
%% Build a signed Hex v2 repository (repository name "hexpm") of a chosen size for
%% bench/scale.sh, with the hex_core modules bundled inside rebar3 (r3_hex_*).
%%
%% Usage: make_scale_repo.escript OUT_DIR PRIVATE_KEY_PEM PUBLIC_KEY_PEM PACKAGES RELEASES TARBALL_BYTES
%%
%% Writes PACKAGES packages named scale_00001, scale_00002, ... with RELEASES releases each
%% (1.0.0, 1.1.0, ...): for every release a real Hex tarball (format 3, built by
%% r3_hex_tarball) of about TARBALL_BYTES, whose one file is pseudo-random bytes (gzip cannot
%% shrink them, so the size holds), one signed /packages/NAME record per package, and the
%% signed /names and /versions. Deterministic for a given key and size. Packages are built by
%% one worker per scheduler.
%% Prints one line: packages, releases, tarball bytes, registry bytes.
-mode(compile).

main([OutDir, PrivFile, PubFile, P, R, B]) ->
    load_hex_core(),
    Packages = list_to_integer(P),
    Releases = list_to_integer(R),
    Bytes = list_to_integer(B),
    {ok, Priv} = file:read_file(PrivFile),
    {ok, Pub} = file:read_file(PubFile),
    [ok = filelib:ensure_dir(filename:join([OutDir, D, "x"])) || D <- ["packages", "tarballs"]],
    Names = [iolist_to_binary(io_lib:format("scale_~5..0b", [I])) || I <- lists:seq(1, Packages)],
    Versions = [iolist_to_binary(io_lib:format("1.~p.0", [J])) || J <- lists:seq(0, Releases - 1)],
    Overhead = overhead(Bytes),
    Workers = erlang:system_info(schedulers_online),
    Parent = self(),
    Slices = slices(lists:zip(lists:seq(1, Packages), Names), Workers),
    Refs = [begin
                Ref = make_ref(),
                spawn_link(fun() ->
                                   Sizes = [package(OutDir, I, Name, Versions, Bytes - Overhead, Priv) || {I, Name} <- Slice],
                                   Parent ! {Ref, lists:sum(Sizes)}
                           end),
                Ref
            end || Slice <- Slices],
    TarBytes = lists:sum([receive {Ref, S} -> S end || Ref <- Refs]),
    write(OutDir, "versions",
          signed(r3_hex_registry:encode_versions(
                   #{repository => <<"hexpm">>,
                     packages => [#{name => N, versions => Versions, retired => []} || N <- Names]}), Priv)),
    write(OutDir, "names",
          signed(r3_hex_registry:encode_names(
                   #{repository => <<"hexpm">>, packages => [#{name => N} || N <- Names]}), Priv)),
    ok = file:write_file(filename:join(OutDir, "public_key"), Pub),
    self_check(OutDir, Pub, hd(Names), hd(Versions)),
    RegBytes = lists:sum([filelib:file_size(filename:join(OutDir, F))
                          || F <- [<<"names">>, <<"versions">> | [<<"packages/", N/binary>> || N <- Names]]]),
    io:format("packages=~p releases=~p tarball_bytes=~p registry_bytes=~p~n",
              [Packages, Packages * Releases, TarBytes, RegBytes]),
    ok;
main(_) ->
    io:format(standard_error, "usage: make_scale_repo.escript OUT_DIR PRIVATE_KEY_PEM PUBLIC_KEY_PEM "
                              "PACKAGES RELEASES TARBALL_BYTES~n", []),
    halt(2).

%% Round-robin: slice K holds every K-th package.
slices(Items, N) ->
    Indexed = lists:zip(lists:seq(0, length(Items) - 1), Items),
    [[It || {Ix, It} <- Indexed, Ix rem N =:= K] || K <- lists:seq(0, N - 1), K < max(1, length(Items))].

%% Writes a package's tarballs and its signed record; returns the tarballs' total size.
package(OutDir, I, Name, Versions, Blob, Priv) ->
    Releases = [tarball(OutDir, I, J, Name, Vsn, Blob) || {J, Vsn} <- lists:zip(lists:seq(1, length(Versions)), Versions)],
    write(OutDir, <<"packages/", Name/binary>>,
          signed(r3_hex_registry:encode_package(
                   #{repository => <<"hexpm">>, name => Name,
                     releases => [maps:remove(size, Rel) || Rel <- Releases]}), Priv)),
    lists:sum([S || #{size := S} <- Releases]).

%% What a tarball holds beyond its blob (metadata, tar headers and padding, gzip framing),
%% measured on a probe of the requested size.
overhead(Target) ->
    Blob = max(1, Target - 4096),
    #{tarball := T} = build(<<"scale_probe">>, <<"1.0.0">>, rand:bytes(Blob)),
    byte_size(T) - Blob.

%% A tarball whose one file is Blob pseudo-random bytes.
tarball(OutDir, I, J, Name, Vsn, Blob) ->
    rand:seed(exsss, {I, J, 20}),
    #{tarball := T, inner_checksum := Inner, outer_checksum := Outer} = build(Name, Vsn, rand:bytes(max(1, Blob))),
    ok = file:write_file(filename:join([OutDir, "tarballs", <<Name/binary, "-", Vsn/binary, ".tar">>]), T),
    #{version => Vsn, inner_checksum => Inner, outer_checksum => Outer, dependencies => [],
      size => byte_size(T)}.

build(Name, Vsn, Blob) ->
    Meta = #{<<"name">> => Name, <<"version">> => Vsn, <<"app">> => Name,
             <<"description">> => <<"scale benchmark package">>,
             <<"licenses">> => [<<"Apache-2.0">>], <<"links">> => #{},
             <<"requirements">> => #{}, <<"build_tools">> => [<<"rebar3">>],
             <<"files">> => [<<"priv/blob.bin">>]},
    {ok, R} = r3_hex_tarball:create(Meta, [{"priv/blob.bin", Blob}]),
    R.

signed(Payload, Priv) -> zlib:gzip(r3_hex_registry:sign_protobuf(Payload, Priv)).

write(OutDir, Path, Bin) -> ok = file:write_file(filename:join(OutDir, Path), Bin).

%% Read back through the decoders the clients use: /names, /versions, the first record and
%% its first release's tarball.
self_check(OutDir, Pub, Name, Vsn) ->
    Read = fun(Path) ->
                   {ok, Gz} = file:read_file(filename:join(OutDir, Path)),
                   {ok, Payload} = r3_hex_registry:decode_and_verify_signed(zlib:gunzip(Gz), Pub),
                   Payload
           end,
    {ok, _} = r3_hex_registry:decode_names(Read("names"), <<"hexpm">>),
    {ok, _} = r3_hex_registry:decode_versions(Read("versions"), <<"hexpm">>),
    {ok, Releases} = r3_hex_registry:decode_package(Read(<<"packages/", Name/binary>>), <<"hexpm">>, Name),
    [#{outer_checksum := OC}] = [Rel || Rel = #{version := V} <- Releases, V =:= Vsn],
    {ok, Tar} = file:read_file(filename:join(OutDir, <<"tarballs/", Name/binary, "-", Vsn/binary, ".tar">>)),
    {ok, #{outer_checksum := OC}} = r3_hex_tarball:unpack(Tar, memory),
    ok.

load_hex_core() ->
    Rebar3 = case os:getenv("REBAR3") of
                 false -> os:find_executable("rebar3");
                 P -> P
             end,
    Rebar3 =/= false orelse abort("rebar3 not found in PATH"),
    {ok, Sections} = escript:extract(Rebar3, []),
    {ok, Files} = zip:extract(proplists:get_value(archive, Sections), [memory]),
    [{module, _} = code:load_binary(list_to_atom(filename:basename(F, ".beam")), F, B)
     || {F, B} <- Files,
        filename:extension(F) =:= ".beam",
        lists:prefix("r3_hex_", filename:basename(F)) orelse
            lists:prefix("r3_safe_", filename:basename(F))],
    ok.

abort(Msg) -> io:format(standard_error, "make_scale_repo: ~s~n", [Msg]), halt(1).
