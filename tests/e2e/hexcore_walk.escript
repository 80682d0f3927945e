#!/usr/bin/env escript
%%! -noshell
%% A real hex_core client (the r3_hex_* modules bundled inside rebar3) walking a Hex v2
%% repository over HTTP: /names, /versions, every /packages/NAME and every tarball.
%% Every registry file is signature-verified (RSA-SHA512) and origin-checked (repository and
%% package name), and every tarball is unpacked and its sha256 compared with the registry's
%% outer_checksum, exactly as rebar3 does.
%%
%% Usage: hexcore_walk.escript BASE_URL REPO_NAME PUBLIC_KEY_PEM
%% Exit 0 when everything verifies; the last line is "HEXCORE WALK OK: ...".
-mode(compile).

main([BaseUrl, RepoName, PubKeyFile]) ->
    load_hex_core(),
    {ok, _} = application:ensure_all_started(inets),
    {ok, Pub} = file:read_file(PubKeyFile),
    Config = maps:merge(r3_hex_core:default_config(),
                        #{repo_url => list_to_binary(BaseUrl),
                          repo_name => list_to_binary(RepoName),
                          repo_public_key => Pub,
                          repo_verify => true,
                          repo_verify_origin => true,
                          http_adapter => {r3_hex_http_httpc, #{profile => default}}}),
    Names = ok_200(names, r3_hex_repo:get_names(Config)),
    Versions = ok_200(versions, r3_hex_repo:get_versions(Config)),
    length(Names) =:= length(Versions) orelse fail({names_versions_differ, Names, Versions}),
    Counts =
        [begin
             Releases = ok_200({package, Name}, r3_hex_repo:get_package(Config, Name)),
             #{versions := Vs} = hd([V || V = #{name := N} <- Versions, N =:= Name]),
             lists:sort(Vs) =:= lists:sort([V || #{version := V} <- Releases])
                 orelse fail({versions_mismatch, Name, Vs}),
             [begin
                  Tar = ok_200({tarball, Name, V}, r3_hex_repo:get_tarball(Config, Name, V)),
                  case r3_hex_tarball:unpack(Tar, memory) of
                      {ok, #{outer_checksum := OC,
                             metadata := #{<<"name">> := Name, <<"version">> := V}}} ->
                          byte_size(Tar);
                      {ok, #{outer_checksum := Other}} ->
                          fail({tarball, Name, V, {outer_checksum_mismatch, hex(OC), hex(Other)}});
                      {error, Reason} ->
                          fail({tarball, Name, V, Reason})
                  end
              end || #{version := V, outer_checksum := OC} <- Releases]
         end || #{name := Name} <- Names],
    Sizes = lists:append(Counts),
    io:format("HEXCORE WALK OK: ~p packages, ~p tarballs (~p bytes), all verified~n",
              [length(Names), length(Sizes), lists:sum(Sizes)]);
main(_) ->
    io:format(standard_error, "usage: hexcore_walk.escript BASE_URL REPO_NAME PUBLIC_KEY_PEM~n", []),
    halt(2).

ok_200(_What, {ok, {200, _Headers, Body}}) -> Body;
ok_200(What, Other) -> fail({What, Other}).

fail(Term) ->
    io:format("HEXCORE WALK FAILED: ~P~n", [Term, 30]),
    halt(1).

hex(Bin) -> lists:flatten([io_lib:format("~2.16.0b", [B]) || <<B>> <= Bin]).

%% Load the r3_hex_* modules straight out of the rebar3 escript archive.
load_hex_core() ->
    Rebar3 = case os:getenv("REBAR3") of
                 false -> os:find_executable("rebar3");
                 P -> P
             end,
    Rebar3 =/= false orelse fail(rebar3_not_found),
    {ok, Sections} = escript:extract(Rebar3, []),
    {ok, Files} = zip:extract(proplists:get_value(archive, Sections), [memory]),
    [{module, _} = code:load_binary(list_to_atom(filename:basename(F, ".beam")), F, B)
     || {F, B} <- Files,
        filename:extension(F) =:= ".beam",
        lists:prefix("r3_hex_", filename:basename(F)) orelse
            lists:prefix("r3_safe_", filename:basename(F))],
    ok.
